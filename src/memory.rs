//! Giving memory back once a burst is over, so that an idle daemon is small.
//!
//! Two kinds: heap that glibc keeps after it was freed (a status reply for
//! 1000 processes is thousands of short strings), and the mappings of
//! minder's own code that the start touched. For the second: the kernel
//! maps the pages around every page of the binary a process touches
//! (fault-around, 64 KiB), so parsing the config, the command line and
//! starting 1000 processes leave most of the binary mapped, counted in the
//! daemon's RSS, though an idle daemon runs a small part of it. Once the
//! start (or a reload) is done, those mappings are dropped: the pages stay
//! in the page cache, and what runs afterwards is mapped again on its first
//! use (a minor fault; no read from disk while the page is cached).

use std::os::unix::fs::MetadataExt;

/// After a burst (a start of 1000 processes, a reload, a status reply or a
/// scrape of them all): freed heap and the mappings of the code it ran go
/// back to the OS. Returns the bytes of code mappings dropped.
pub fn release() -> usize {
    release_free_memory();
    release_code_pages()
}

/// Hands heap freed after a burst back to the OS; glibc keeps it otherwise.
fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Drops this process's mappings of the pages of its own executable, where
/// that loses nothing: read-only mappings holding no private copy of a page
/// (`Anonymous: 0 kB` in smaps; the relocated part of the binary is
/// excluded by that, as is a page a debugger wrote a breakpoint into).
/// Returns the bytes of the mappings advised (0 when /proc cannot say).
fn release_code_pages() -> usize {
    let Ok(exe) = std::fs::metadata("/proc/self/exe") else {
        return 0;
    };
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return 0;
    };
    let mut released = 0;
    for (start, end) in clean_mappings_of(&smaps, exe.ino()) {
        // SAFETY: [start, end) is one whole mapping of this process (from
        // smaps), of a file, not writable, holding no private page: after
        // MADV_DONTNEED each page is mapped again from the same file on its
        // next access, with the same contents. No memory anything refers to
        // is freed; code running in the range meanwhile just faults.
        let done =
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
        if done == 0 {
            released += end - start;
        }
    }
    released
}

/// The `(start, end)` of each mapping in `smaps` of the file with inode
/// `ino` that is not writable and holds no anonymous (copied) page.
fn clean_mappings_of(smaps: &str, ino: u64) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    // The mapping whose fields are being read, when it is a candidate.
    let mut candidate: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        if let Some(kb) = line.strip_prefix("Anonymous:") {
            if let Some(range) = candidate.take() {
                if kb.trim() == "0 kB" {
                    found.push(range);
                }
            }
            continue;
        }
        // A mapping's header: `start-end perms offset dev inode path`.
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms), Some(_offset), Some(_dev), Some(inode)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            continue;
        };
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        candidate = (inode.parse() == Ok(ino) && !perms.contains('w') && end > start)
            .then_some((start, end));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_clean_read_only_mappings_of_the_file_are_chosen() {
        let smaps = "\
55d0a0000000-55d0a0100000 r--p 00000000 fe:00 77 /usr/bin/minder
Rss:                1000 kB
Anonymous:             0 kB
55d0a0100000-55d0a0400000 r-xp 00100000 fe:00 77 /usr/bin/minder
Rss:                2000 kB
Anonymous:             0 kB
55d0a0400000-55d0a0420000 r--p 00400000 fe:00 77 /usr/bin/minder
Rss:                 128 kB
Anonymous:           128 kB
55d0a0420000-55d0a0424000 rw-p 00420000 fe:00 77 /usr/bin/minder
Anonymous:             8 kB
7f0000000000-7f0000100000 r-xp 00000000 fe:00 99 /usr/lib/libc.so.6
Anonymous:             0 kB
7f0000200000-7f0000300000 rw-p 00000000 00:00 0 
Anonymous:          1024 kB
";
        assert_eq!(
            clean_mappings_of(smaps, 77),
            vec![
                (0x55d0a0000000, 0x55d0a0100000),
                (0x55d0a0100000, 0x55d0a0400000),
            ]
        );
        assert!(clean_mappings_of(smaps, 5).is_empty());
    }

    #[test]
    fn code_keeps_running_after_its_mappings_are_dropped() {
        fn work(n: u64) -> u64 {
            (1..=n).map(|i| i * i % 7).sum()
        }
        let before = work(1000);
        assert!(
            release_code_pages() > 0,
            "no mapping of the test binary was dropped"
        );
        // Everything from here on runs from pages mapped again.
        assert_eq!(work(1000), before);
        let text = format!("{:?}", std::path::Path::new("/tmp"));
        assert_eq!(text, "\"/tmp\"");
    }
}
