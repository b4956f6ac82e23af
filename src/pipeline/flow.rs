//! What a worker keeps of a request in flight: its facts, its conversation with Keycloak, what
//! it waits for.

use crate::enforce::events::Event;
use crate::enforce::step::Credential;
use crate::enforce::step::{Pending, RequestFacts};
use crate::request::view::RequestView;
use crate::store::decisions::Key;
use crate::wire::http::Answer;

/// A request not decided yet, or a back-channel logout being read.
pub struct Stream {
    /// `None` for a logout request.
    pub flow: Option<Flow>,
    /// The claims need the body: it is being buffered, headers held, to decide at its end.
    pub reading_body: bool,
    /// The whole body has arrived (held while the decision was pending).
    pub body_ended: bool,
    /// How much body the proxy holds so far.
    pub body_len: usize,
    /// A back-channel logout to this enforcer's endpoint, and the `content-type` it came with:
    /// its body is read and answered here, never forwarded.
    pub logout: Option<(usize, Option<String>)>,
}

/// The request facts and the state of its conversation with Keycloak.
pub struct Flow {
    pub enforcer: usize,
    pub method: String,
    pub path: String,
    pub cred: Credential,
    pub pending: Option<Pending>,
    /// When the pending callout was dispatched (latency histogram).
    pub sent_ms: i64,
    /// The time this request has waited on Keycloak's answers so far (the decision record).
    pub keycloak_ms: Option<i64>,
    /// It waited for another request's identical Keycloak call.
    pub waited: bool,
    /// What claims may read; empty unless some enforcer has a claim information point.
    pub headers: Vec<(String, Vec<u8>)>,
    pub peer: Option<String>,
    pub tls: bool,
    /// The buffered body, once read for claims.
    pub body: Option<Vec<u8>>,
    /// This request's memo key (a verified token): where a memoizable allow is remembered.
    pub memo_key: Option<u128>,
    /// The request's trace context, copied onto its callouts.
    pub trace: Vec<(String, String)>,
    /// A gRPC client: its local replies are answered in gRPC's form.
    pub grpc: Option<crate::enforce::grpc::Wire>,
}

impl Flow {
    /// The pending callout goes to a claim service, not Keycloak.
    pub fn to_service(&self) -> bool {
        matches!(self.pending, Some(Pending::Claims { .. }))
    }

    pub fn facts(&self) -> RequestFacts<'_> {
        RequestFacts {
            method: &self.method,
            path: &self.path,
            credential: &self.cred,
            view: RequestView {
                headers: &self.headers,
                peer: self.peer.as_deref(),
                tls: self.tls,
                body: self.body.as_deref(),
            },
            grpc: self.grpc.is_some(),
        }
    }
}

impl Stream {
    pub fn new(flow: Option<Flow>) -> Stream {
        Stream {
            flow,
            reading_body: false,
            body_ended: false,
            body_len: 0,
            logout: None,
        }
    }
}

/// A request waiting for a decision another request is asking Keycloak for.
pub struct Parked {
    pub stream: u32,
    pub key: Key,
    pub until_ms: i64,
}

/// The event a callout's answer is counted as.
pub fn answer_event(answer: &Answer, latency_ms: i64) -> Event {
    let (ok, status) = answer.outcome();
    Event::KeycloakAnswer {
        ok,
        status,
        latency_ms,
    }
}
