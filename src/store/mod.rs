//! What is remembered.

pub mod decisions;
pub mod documents;
pub mod memo;
