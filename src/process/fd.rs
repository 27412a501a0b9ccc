//! Small helpers on file descriptors minder owns.

use std::os::fd::RawFd;

/// Sets or clears close-on-exec on `fd`: set on every fd minder opens or
/// takes over, cleared only on those `reexec` hands to the next image.
pub fn set_cloexec(fd: RawFd, on: bool) {
    // SAFETY: F_GETFD/F_SETFD read and change only the descriptor flags of
    // `fd`, touch no memory, and on an fd that is not open fail with EBADF
    // (then nothing is changed).
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags >= 0 {
            let flags = if on {
                flags | libc::FD_CLOEXEC
            } else {
                flags & !libc::FD_CLOEXEC
            };
            libc::fcntl(fd, libc::F_SETFD, flags);
        }
    }
}
