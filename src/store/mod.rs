//! What is remembered between requests and shared between workers: the decision table and its
//! rules (`decisions`), Keycloak's documents in shared data (`documents`), and the per-worker
//! shortcut for repeated requests (`memo`).

pub mod decisions;
pub mod documents;
pub mod front;
pub(crate) mod lanes;
pub mod logouts;
pub mod memo;
pub mod replay;
pub mod shared;

pub use replay::{Cas, FirstUse, LocalReplay, ReplayGuard};

/// A shared-data key, `{prefix}{table}{sep}{n}`, written without `format!`'s machinery: a DPoP
/// request names three such keys and a decision lookup one.
#[cfg_attr(kcpep_size, optimize(speed))]
pub(crate) fn numbered_key(prefix: &str, table: &str, sep: char, n: u64) -> String {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    let mut key = String::with_capacity(prefix.len() + table.len() + 1 + digits.len() - at);
    key.push_str(prefix);
    key.push_str(table);
    key.push(sep);
    key.extend(digits[at..].iter().map(|&d| char::from(d)));
    key
}

/// The decision cache as the enforcer sees it (`shared::SharedStore` over the host's shared data).
pub trait DecisionStore {
    fn get(&mut self, key: &decisions::Key) -> Option<decisions::State>;
    /// Marks the key as being asked (CAS); false when another request claimed it first.
    fn claim(&mut self, key: &decisions::Key, until_ms: i64) -> bool;
    fn put(&mut self, key: &decisions::Key, entry: decisions::State);
    /// Keycloak's answer to a lazy path lookup that another worker stored (shared path cache).
    fn get_path(&mut self, _path: &str, _now_ms: i64) -> Option<Vec<u8>> {
        None
    }
    fn put_path(&mut self, _path: &str, _answer: &[u8], _expires_ms: i64) {}
}

/// No decision cache.
pub struct NoStore;

impl DecisionStore for NoStore {
    fn get(&mut self, _: &decisions::Key) -> Option<decisions::State> {
        None
    }
    fn claim(&mut self, _: &decisions::Key, _: i64) -> bool {
        true
    }
    fn put(&mut self, _: &decisions::Key, _: decisions::State) {}
}

#[cfg(test)]
mod tests {
    #[test]
    fn numbered_keys_read_as_format_writes_them() {
        for n in [0, 7, 10, 99, 65_535, 1 << 40, u64::MAX] {
            assert_eq!(
                super::numbered_key("kcpep.jti.", "t", '.', n),
                format!("kcpep.jti.t.{n}")
            );
        }
        assert_eq!(
            super::numbered_key("kcpep/v1/dc/", "x", '/', 3),
            "kcpep/v1/dc/x/3"
        );
    }
}
