//! Facts about this host that rendezvous exchanges: its name, its kernel's boot id, and the pid
//! namespace a process runs in.

/// This host's name.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for `buf.len()` bytes; gethostname NUL-terminates within it
    // or truncates, and we stop at the first NUL either way.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown-host".to_string();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// The kernel's boot id: two processes with the same host name and boot id share a kernel
/// (and so shared memory), whatever their containers call themselves.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// The pid namespace this process runs in (`pid:[inode]`), empty if unknown: pids published by
/// a process in another namespace mean nothing here (two containers can share a host name and
/// a boot id, and so memory, yet not their pids).
pub fn pid_namespace() -> String {
    std::fs::read_link("/proc/self/ns/pid").map(|p| p.to_string_lossy().into_owned()).unwrap_or_default()
}
