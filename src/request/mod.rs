//! What can be said of an incoming request.

pub mod forwarded;
pub mod pattern;
pub mod placeholders;
pub mod uri;
pub mod view;
