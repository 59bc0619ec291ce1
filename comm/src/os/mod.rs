//! The few OS facilities ferrovod needs beyond std, one file each: `poll(2)` with a bounded,
//! yielding look first ([`poll`]), a wake-up pipe ([`Doorbell`]), descriptors ([`pipe`],
//! [`set_nonblocking`], [`read_to_end_until`]), the host's identity ([`hostname`], [`boot_id`]),
//! processes ([`pidfd_open`], [`process_exists`], [`signal_name`], [`killed_with_parent`]).

mod doorbell;
mod fd;
mod host;
mod poll;
mod process;

pub use doorbell::Doorbell;
pub use fd::{pipe, read_to_end_until, set_nonblocking};
pub use host::{boot_id, hostname, pid_namespace};
pub use poll::{PollFd, look, poll, poll_after_spin};
pub use process::{Pid, getpid, getppid, killed_with_parent, pidfd_open, process_exists, signal_name};
