//! One function per command; `main` parses arguments and calls these.

pub mod build;
pub mod gc;
pub mod inspect;
pub mod load;
pub mod lock;
pub mod pin;
pub mod push;
pub mod setup;
pub mod sign;
pub mod verify;
