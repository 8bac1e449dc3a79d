//! One function per command; `main` parses arguments and calls these.

pub mod build;
pub mod gc;
pub mod inspect;
pub mod lock;
pub mod load;
pub mod push;
pub mod setup;
