//! The few OS facilities ferrovod needs beyond std, one file each: `poll(2)` with a bounded,
//! yielding look first ([`poll`]), a wake-up pipe ([`Doorbell`]), the host's identity
//! ([`hostname`], [`boot_id`]).

mod doorbell;
mod host;
mod poll;

pub use doorbell::Doorbell;
pub use host::{boot_id, hostname, process_exists};
pub use poll::{PollFd, poll, poll_after_spin};
