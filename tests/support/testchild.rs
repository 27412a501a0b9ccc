//! minder-testchild: the program minder's integration tests and benchmarks supervise.
//!
//! It does what a test asks through flags, reports what it saw through files
//! (always written to `FILE.tmp` then renamed, so a reader never sees half a
//! file) and never outlives [`MAX_LIFETIME`], so a broken test leaves nothing
//! running for long. std + libc only; it forks before it starts any helper
//! thread, so `fork` is safe.
//!
//! Flags (combine freely):
//! - `--exit-after MS`     exit after MS milliseconds (default: run until killed)
//! - `--exit-code N`       exit code for `--exit-after` (default 0)
//! - `--exit-signal SIG`   at `--exit-after`, die of signal SIG (number or `KILL`, `TERM`,
//!   `INT`, `HUP`, `ABRT`, `SEGV`) instead of exiting
//! - `--ignore-term`       ignore SIGTERM and SIGINT
//! - `--grandchild FILE`   fork a grandchild that sleeps (bounded) and write its PID to FILE
//! - `--grandchild-ignores-term`  the grandchild ignores SIGTERM and SIGINT
//! - `--write-env FILE`    write `cwd=<dir>`, then every env var as `KEY=VALUE`, to FILE
//! - `--write-fds FILE`    write the open fd numbers of this process, one a line, to FILE
//! - `--alloc-mib N`      allocate N MiB, touch every page, and keep it until exit
//! - `--burn-ms N`        spin until this process has used N ms of CPU time
//!   (bounded by its lifetime)
//! - `--pidfile FILE`      write own PID to FILE; written last, after every other
//!   setup step, so a test waiting for it knows signals are set up
//! - `--record FILE`       append `start <CLOCK_MONOTONIC ns> <pid>` at start,
//!   `exit <ns> <pid>` right before exiting due to `--exit-after`, and
//!   `stop <ns> <pid>` when SIGTERM/SIGINT arrives (then dies of that signal)
//! - `--signal-log FILE`   append the name (`HUP`, `USR1`, `USR2`) of each received signal
//! - `--print TEXT`        print TEXT as a line on stdout at start (repeatable)
//! - `--eprint TEXT`       print TEXT as a line on stderr at start (repeatable)
//! - `--write-lines N`     then write N numbered lines `line 000000001` .. to stdout, fast
//! - `--write-bytes N`     then write N bytes to stdout as fast as it can, in 64 KiB writes of
//!   128-byte lines (N is rounded down to whole lines); for benchmarks
//! - `--interleave N`      then write `out I` to stdout and `err I` to stderr, alternately,
//!   one write each (I = 1..N)
//! - `--tick MS`           print `tick N` (N = 1, 2, ...) on stdout every MS milliseconds
//! - `--tag TEXT`          ignored: lets a config vary argv or show placeholders
//! - `--http PORT`         serve HTTP on 127.0.0.1:PORT: 200 to any request, 500
//!   while the `--unhealthy-if` file exists
//! - `--unhealthy-if FILE` see `--http`
//! - `--tcp PORT`          accept (and close) TCP connections on 127.0.0.1:PORT
//! - `--notify-ready-after MS`  send `READY=1` to `$NOTIFY_SOCKET` after MS ms
//! - `--notify-status TEXT`     send `STATUS=TEXT` to `$NOTIFY_SOCKET` at start
//! - `--notify MESSAGE`  send MESSAGE as one datagram to `$NOTIFY_SOCKET` at start (after
//!   `--notify-status`), `%grandchild%` replaced by the `--grandchild` PID and `%parent%` by
//!   this process's parent PID (e.g. `MAINPID=%grandchild%\nREADY=1`)
//! - `--watchdog-for MS`   send `WATCHDOG=1` every `$WATCHDOG_USEC`/4 for MS ms, then stop
//! - `--unready-if FILE`   with `--notify-ready-after`: never send `READY=1` if FILE exists at start
//! - `--serve-inherited`   serve HTTP on the sockets passed by socket activation
//!   (fds 3.., `LISTEN_FDS`; exits 3 unless `LISTEN_PID` is its own PID); the
//!   response body is the serving PID. On SIGTERM/SIGINT it stops accepting,
//!   finishes the requests in flight and exits 0 (a graceful drain).
//! - `--request-ms MS`     with `--serve-inherited`: take MS ms per request
//!   (with `--notify-ready-after`, accepting starts when it is about to be ready)

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process;
use std::time::{Duration, Instant};

/// Nothing started by a test may linger longer than this.
const MAX_LIFETIME: Duration = Duration::from_secs(600);

/// What the command line asked for.
#[derive(Default)]
struct Opts {
    exit_after: Option<Duration>,
    exit_code: i32,
    exit_signal: Option<i32>,
    ignore_term: bool,
    grandchild: Option<PathBuf>,
    grandchild_ignores_term: bool,
    write_env: Option<PathBuf>,
    write_fds: Option<PathBuf>,
    pidfile: Option<PathBuf>,
    record: Option<PathBuf>,
    signal_log: Option<PathBuf>,
    print: Vec<String>,
    eprint: Vec<String>,
    write_lines: u64,
    write_bytes: u64,
    interleave: u64,
    tick: Option<Duration>,
    http: Option<u16>,
    unhealthy_if: Option<PathBuf>,
    tcp: Option<u16>,
    notify_ready_after: Option<Duration>,
    notify_status: Option<String>,
    notify: Option<String>,
    watchdog_for: Option<Duration>,
    unready_if: Option<PathBuf>,
    serve_inherited: bool,
    request_ms: u64,
    alloc_mib: usize,
    burn_ms: u64,
}

fn parse(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts::default();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--exit-after" => {
                let v = value()?;
                let ms: u64 = v.parse().map_err(|_| format!("bad --exit-after {v:?}"))?;
                o.exit_after = Some(Duration::from_millis(ms));
            }
            "--exit-code" => {
                let v = value()?;
                o.exit_code = v.parse().map_err(|_| format!("bad --exit-code {v:?}"))?;
            }
            "--exit-signal" => {
                let v = value()?;
                o.exit_signal =
                    Some(parse_signal(&v).ok_or_else(|| format!("bad --exit-signal {v:?}"))?);
            }
            "--ignore-term" => o.ignore_term = true,
            "--grandchild" => o.grandchild = Some(value()?.into()),
            "--grandchild-ignores-term" => o.grandchild_ignores_term = true,
            "--write-env" => o.write_env = Some(value()?.into()),
            "--write-fds" => o.write_fds = Some(value()?.into()),
            "--pidfile" => o.pidfile = Some(value()?.into()),
            "--record" => o.record = Some(value()?.into()),
            "--signal-log" => o.signal_log = Some(value()?.into()),
            "--print" => o.print.push(value()?),
            "--eprint" => o.eprint.push(value()?),
            "--write-lines" => {
                let v = value()?;
                o.write_lines = v.parse().map_err(|_| format!("bad --write-lines {v:?}"))?;
            }
            "--write-bytes" => {
                let v = value()?;
                o.write_bytes = v.parse().map_err(|_| format!("bad --write-bytes {v:?}"))?;
            }
            "--interleave" => {
                let v = value()?;
                o.interleave = v.parse().map_err(|_| format!("bad --interleave {v:?}"))?;
            }
            "--tick" => {
                let v = value()?;
                let ms: u64 = v.parse().map_err(|_| format!("bad --tick {v:?}"))?;
                o.tick = Some(Duration::from_millis(ms.max(1)));
            }
            "--tag" => {
                value()?;
            }
            "--http" => o.http = Some(parse_num(&value()?, flag)?),
            "--unhealthy-if" => o.unhealthy_if = Some(value()?.into()),
            "--tcp" => o.tcp = Some(parse_num(&value()?, flag)?),
            "--notify-ready-after" => {
                o.notify_ready_after = Some(Duration::from_millis(parse_num(&value()?, flag)?))
            }
            "--notify-status" => o.notify_status = Some(value()?),
            "--notify" => o.notify = Some(value()?),
            "--unready-if" => o.unready_if = Some(value()?.into()),
            "--serve-inherited" => o.serve_inherited = true,
            "--request-ms" => o.request_ms = parse_num(&value()?, flag)?,
            "--alloc-mib" => o.alloc_mib = parse_num(&value()?, flag)?,
            "--burn-ms" => o.burn_ms = parse_num(&value()?, flag)?,
            "--watchdog-for" => {
                o.watchdog_for = Some(Duration::from_millis(parse_num(&value()?, flag)?))
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(o)
}

fn parse_num<T: std::str::FromStr>(v: &str, flag: &str) -> Result<T, String> {
    v.parse().map_err(|_| format!("bad {flag} {v:?}"))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("minder-testchild: {e}");
            process::exit(2);
        }
    };
    if let Err(e) = run(&opts) {
        eprintln!("minder-testchild: {e}");
        process::exit(2);
    }
}

fn run(o: &Opts) -> io::Result<()> {
    let start = Instant::now();
    // Signals we handle are blocked and collected with sigtimedwait: no handler,
    // no async-signal-safety concerns.
    let mut waited = SigSet::empty();
    if o.signal_log.is_some() {
        waited.add(libc::SIGHUP);
        waited.add(libc::SIGUSR1);
        waited.add(libc::SIGUSR2);
    }
    if o.ignore_term {
        set_disposition(libc::SIGTERM, libc::SIG_IGN);
        set_disposition(libc::SIGINT, libc::SIG_IGN);
    } else if o.record.is_some() || o.serve_inherited {
        waited.add(libc::SIGTERM);
        waited.add(libc::SIGINT);
    }
    waited.block();

    if let Some(rec) = &o.record {
        record(rec, "start")?;
    }
    let mut grandchild = None;
    if let Some(file) = &o.grandchild {
        let pid = fork_grandchild(o.grandchild_ignores_term);
        write_atomic(file, &format!("{pid}\n"))?;
        grandchild = Some(pid);
    }
    if let Some(file) = &o.write_env {
        let mut text = format!("cwd={}\n", std::env::current_dir()?.display());
        for (k, v) in std::env::vars_os() {
            text.push_str(&format!(
                "{}={}\n",
                k.to_string_lossy(),
                v.to_string_lossy()
            ));
        }
        write_atomic(file, &text)?;
    }
    if let Some(file) = &o.write_fds {
        let mut fds: Vec<i32> = fs::read_dir("/proc/self/fd")?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        fds.sort_unstable();
        // The directory handle used for listing shows up too; drop fds no longer open.
        // SAFETY: fcntl(F_GETFD) on an integer only queries the descriptor table.
        fds.retain(|&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1);
        let text: String = fds.iter().map(|fd| format!("{fd}\n")).collect();
        write_atomic(file, &text)?;
    }
    {
        let mut out = io::stdout().lock();
        for line in &o.print {
            writeln!(out, "{line}")?;
        }
        out.flush()?;
        let mut err = io::stderr().lock();
        for line in &o.eprint {
            writeln!(err, "{line}")?;
        }
        if o.write_lines > 0 {
            let mut w = io::BufWriter::with_capacity(64 * 1024, &mut out);
            for i in 1..=o.write_lines {
                writeln!(w, "line {i:09}")?;
            }
            w.flush()?;
        }
        if o.write_bytes > 0 {
            let mut line = [b'x'; 128];
            line[127] = b'\n';
            let block: Vec<u8> = line.repeat(512);
            let mut left = o.write_bytes / 128 * 128;
            while left > 0 {
                let n = left.min(block.len() as u64) as usize;
                out.write_all(&block[..n])?;
                left -= n as u64;
            }
            out.flush()?;
        }
        for i in 1..=o.interleave {
            // One write(2) each, so the order on a merged pipe is the order here.
            out.write_all(format!("out {i}\n").as_bytes())?;
            out.flush()?;
            err.write_all(format!("err {i}\n").as_bytes())?;
        }
    }
    // Helper threads start after the signal mask is set, so they inherit it and
    // every signal still reaches the main thread's sigtimedwait.
    if let Some(port) = o.http {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
        let flag = o.unhealthy_if.clone();
        std::thread::spawn(move || serve_http(listener, flag));
    }
    if let Some(port) = o.tcp {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                drop(conn);
            }
        });
    }
    if let Some(text) = &o.notify_status {
        sd_notify(&format!("STATUS={text}"))?;
    }
    if let Some(message) = &o.notify {
        let grandchild = grandchild.map_or_else(String::new, |pid| pid.to_string());
        // SAFETY: getppid has no preconditions.
        let parent = unsafe { libc::getppid() }.to_string();
        sd_notify(
            &message
                .replace("%grandchild%", &grandchild)
                .replace("%parent%", &parent),
        )?;
    }
    let unready = o.unready_if.as_ref().is_some_and(|f| f.exists());
    let server = if o.serve_inherited {
        // Like a real server: accept once initialised, i.e. when about to be
        // ready; one that never gets ready never accepts.
        let warm_up = o
            .notify_ready_after
            .map(|d| if unready { MAX_LIFETIME } else { d });
        Some(InheritedServer::start(
            o.request_ms,
            warm_up.unwrap_or_default(),
        )?)
    } else {
        None
    };
    if let Some(delay) = o.notify_ready_after.filter(|_| !unready) {
        std::thread::spawn(move || {
            std::thread::sleep(delay);
            let _ = sd_notify("READY=1\nSTATUS=ready");
        });
    }
    if let Some(period) = o.watchdog_for {
        let usec: u64 = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000_000);
        let every = Duration::from_micros(usec / 4);
        std::thread::spawn(move || {
            let until = Instant::now() + period;
            while Instant::now() < until {
                let _ = sd_notify("WATCHDOG=1");
                std::thread::sleep(every);
            }
        });
    }
    // Written through (not zeroed: zero pages may stay unbacked), so it is
    // resident; kept until the process exits.
    let held = std::hint::black_box(vec![0xa5u8; o.alloc_mib * 1024 * 1024]);
    if o.burn_ms > 0 {
        burn(Duration::from_millis(o.burn_ms), start + MAX_LIFETIME);
    }
    if let Some(file) = &o.pidfile {
        write_atomic(file, &format!("{}\n", process::id()))?;
    }

    let lifetime = o.exit_after.unwrap_or(MAX_LIFETIME).min(MAX_LIFETIME);
    let deadline = start + lifetime;
    let mut next_tick = o.tick.map(|t| Instant::now() + t);
    let mut ticks = 0u64;
    // Bounded: each iteration handles one signal or tick, or waits until the deadline.
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        if let (Some(at), Some(every)) = (next_tick, o.tick) {
            if now >= at {
                ticks += 1;
                let mut out = io::stdout().lock();
                out.write_all(format!("tick {ticks}\n").as_bytes())?;
                out.flush()?;
                next_tick = Some(at + every);
                continue;
            }
        }
        let until = next_tick.map_or(deadline, |t| t.min(deadline));
        match waited.timed_wait(until.saturating_duration_since(now)) {
            None => continue,
            Some(sig) if sig == libc::SIGTERM || sig == libc::SIGINT => {
                if let Some(rec) = &o.record {
                    record(rec, "stop")?;
                }
                if let Some(server) = server {
                    server.drain();
                    process::exit(0);
                }
                die_of(sig);
            }
            Some(sig) => {
                if let Some(log) = &o.signal_log {
                    append_line(log, signal_name(sig))?;
                }
            }
        }
    }
    drop(held);
    if o.exit_after.is_some() {
        if let Some(rec) = &o.record {
            record(rec, "exit")?;
        }
        if let Some(sig) = o.exit_signal {
            die_of(sig);
        }
        process::exit(o.exit_code);
    }
    process::exit(0);
}

/// Spins until this process has used `cpu` of CPU time, or until `deadline`.
fn burn(cpu: Duration, deadline: Instant) {
    let mut sum = 0u64;
    while process_cpu_time() < cpu && Instant::now() < deadline {
        for i in 0..100_000u64 {
            sum = std::hint::black_box(sum.wrapping_add(i));
        }
    }
}

/// CPU time used by this process so far (all its threads).
fn process_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out pointer and clock id.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A set of signals, blocked before any helper thread starts (so every
/// thread inherits the mask) and waited for.
struct SigSet(libc::sigset_t);

impl SigSet {
    fn empty() -> Self {
        // SAFETY: sigemptyset initialises the zeroed set it is given.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            SigSet(set)
        }
    }

    fn add(&mut self, sig: i32) {
        // SAFETY: the set was initialised by sigemptyset.
        unsafe { libc::sigaddset(&mut self.0, sig) };
    }

    fn block(&self) {
        // SAFETY: a valid set; the old mask is not needed.
        unsafe { libc::sigprocmask(libc::SIG_BLOCK, &self.0, std::ptr::null_mut()) };
    }

    /// Waits up to `timeout` for one of the signals; `None` on timeout or EINTR.
    fn timed_wait(&self, timeout: Duration) -> Option<i32> {
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: valid set and timespec; the siginfo pointer may be null.
        let r = unsafe { libc::sigtimedwait(&self.0, std::ptr::null_mut(), &ts) };
        (r > 0).then_some(r)
    }
}

fn set_disposition(sig: i32, handler: libc::sighandler_t) {
    // SAFETY: SIG_IGN / SIG_DFL are valid dispositions for these signals.
    unsafe { libc::signal(sig, handler) };
}

/// Dies of `sig` (so the supervisor sees a signal exit), as if it had not been caught.
fn die_of(sig: i32) -> ! {
    set_disposition(sig, libc::SIG_DFL);
    let mut set = SigSet::empty();
    set.add(sig);
    // SAFETY: raising a signal with default disposition, then unblocking it, kills us.
    unsafe {
        libc::raise(sig);
        libc::sigprocmask(libc::SIG_UNBLOCK, &set.0, std::ptr::null_mut());
    }
    process::exit(128 + sig);
}

/// Forks a grandchild that sleeps up to [`MAX_LIFETIME`] with default
/// signal handling, or ignoring SIGTERM and SIGINT.
fn fork_grandchild(ignore_term: bool) -> i32 {
    // SAFETY: called before `run` starts any helper thread: the process has
    // one thread, so no lock is held in the child, which may run ordinary code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        eprintln!("minder-testchild: fork: {}", io::Error::last_os_error());
        process::exit(2);
    }
    if pid == 0 {
        let disposition = if ignore_term {
            libc::SIG_IGN
        } else {
            libc::SIG_DFL
        };
        set_disposition(libc::SIGTERM, disposition);
        set_disposition(libc::SIGINT, disposition);
        // SAFETY: an empty set unblocks nothing; SIG_SETMASK with it clears the mask.
        unsafe {
            let empty = SigSet::empty();
            libc::sigprocmask(libc::SIG_SETMASK, &empty.0, std::ptr::null_mut());
        }
        let deadline = Instant::now() + MAX_LIFETIME;
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_secs(1));
        }
        // SAFETY: leave without running the parent's atexit handlers or flushing its buffers.
        unsafe { libc::_exit(0) };
    }
    pid
}

fn parse_signal(s: &str) -> Option<i32> {
    let name = s.strip_prefix("SIG").unwrap_or(s);
    Some(match name {
        "KILL" => libc::SIGKILL,
        "TERM" => libc::SIGTERM,
        "INT" => libc::SIGINT,
        "HUP" => libc::SIGHUP,
        "ABRT" => libc::SIGABRT,
        "SEGV" => libc::SIGSEGV,
        _ => return s.parse().ok().filter(|n| (1..65).contains(n)),
    })
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "HUP",
        libc::SIGUSR1 => "USR1",
        libc::SIGUSR2 => "USR2",
        libc::SIGTERM => "TERM",
        libc::SIGINT => "INT",
        _ => "OTHER",
    }
}

fn monotonic_ns() -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out pointer and clock id.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

/// Appends `EVENT <monotonic ns> <pid>` in one write.
fn record(file: &Path, event: &str) -> io::Result<()> {
    append_line(
        file,
        &format!("{event} {} {}", monotonic_ns(), process::id()),
    )
}

/// Appends one line with a single O_APPEND write, so concurrent writers never interleave.
fn append_line(file: &Path, line: &str) -> io::Result<()> {
    let mut f = OpenOptions::new().create(true).append(true).open(file)?;
    let buf = format!("{line}\n");
    let n = f.write(buf.as_bytes())?;
    if n != buf.len() {
        return Err(io::Error::other(format!(
            "short append to {}",
            file.display()
        )));
    }
    Ok(())
}

/// Writes FILE.tmp.PID then renames it to FILE.
fn write_atomic(file: &Path, text: &str) -> io::Result<()> {
    // Named after this process: during a rolling restart two instances write
    // the same file at once, and a shared temp name would let one rename the
    // other's away (ENOENT).
    let mut tmp = file.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", process::id()));
    fs::write(&tmp, text)?;
    fs::rename(&tmp, file)?;
    Ok(())
}

/// Reads an HTTP request's head (bounded, up to its blank line); its content
/// does not matter to the test servers.
fn skip_request_head(conn: &mut std::net::TcpStream) {
    use std::io::Read;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
}

/// Answers every HTTP request with 200, or 500 while `unhealthy_if` exists.
fn serve_http(listener: std::net::TcpListener, unhealthy_if: Option<PathBuf>) {
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
        skip_request_head(&mut conn);
        let sick = unhealthy_if.as_ref().is_some_and(|f| f.exists());
        let (status, body) = if sick {
            ("500 Internal Server Error", "sick\n")
        } else {
            ("200 OK", "ok\n")
        };
        let _ = write!(
            conn,
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
}

/// Sends one datagram to `$NOTIFY_SOCKET`, as sd_notify(3) does.
fn sd_notify(message: &str) -> io::Result<()> {
    let path = std::env::var("NOTIFY_SOCKET")
        .map_err(|_| io::Error::new(io::ErrorKind::NotFound, "NOTIFY_SOCKET is not set"))?;
    let socket = std::os::unix::net::UnixDatagram::unbound()?;
    socket.send_to(message.as_bytes(), path)?;
    Ok(())
}

/// An HTTP server on the sockets inherited through socket activation.
struct InheritedServer {
    draining: std::sync::Arc<std::sync::atomic::AtomicBool>,
    in_flight: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    acceptors: Vec<std::thread::JoinHandle<()>>,
}

impl InheritedServer {
    fn start(request_ms: u64, warm_up: Duration) -> io::Result<InheritedServer> {
        use std::sync::atomic::{AtomicBool, AtomicUsize};
        use std::sync::Arc;
        let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
        let listen_pid: u32 = std::env::var("LISTEN_PID")
            .ok()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| invalid("LISTEN_PID is not set".into()))?;
        if listen_pid != process::id() {
            eprintln!(
                "minder-testchild: LISTEN_PID={listen_pid} is not my PID {}",
                process::id()
            );
            process::exit(3);
        }
        let n: i32 = std::env::var("LISTEN_FDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| invalid("LISTEN_FDS is not set".into()))?;
        let draining = Arc::new(AtomicBool::new(false));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let mut acceptors = Vec::new();
        for fd in 3..3 + n {
            // Non-blocking accept after poll: another process sharing the
            // socket may take a connection first, and a drain must notice the
            // flag without waiting for one more client.
            // SAFETY: fcntl on an fd this process received from its supervisor.
            unsafe {
                let flags = libc::fcntl(fd, libc::F_GETFL);
                libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
            }
            let draining = Arc::clone(&draining);
            let in_flight = Arc::clone(&in_flight);
            acceptors.push(std::thread::spawn(move || {
                let until = Instant::now() + warm_up;
                while Instant::now() < until && !draining.load(std::sync::atomic::Ordering::SeqCst)
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                accept_loop(fd, &draining, &in_flight, request_ms)
            }));
        }
        Ok(InheritedServer {
            draining,
            in_flight,
            acceptors,
        })
    }

    /// Stops accepting, then waits (bounded) for the requests in flight.
    fn drain(self) {
        use std::sync::atomic::Ordering;
        self.draining.store(true, Ordering::SeqCst);
        for a in self.acceptors {
            let _ = a.join();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn accept_loop(
    fd: i32,
    draining: &std::sync::atomic::AtomicBool,
    in_flight: &std::sync::Arc<std::sync::atomic::AtomicUsize>,
    request_ms: u64,
) {
    use std::os::fd::FromRawFd;
    use std::sync::atomic::Ordering;
    while !draining.load(Ordering::SeqCst) {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, 50) } <= 0 {
            continue;
        }
        // SAFETY: accept4 on a listening socket; null address pointers are allowed.
        let conn = unsafe {
            libc::accept4(
                fd,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if conn < 0 {
            continue; // EAGAIN: a sibling process took it.
        }
        // Served inline, like `--http`: a drain joins this thread, so every
        // accepted request is answered before the process exits.
        in_flight.fetch_add(1, Ordering::SeqCst);
        // SAFETY: conn is a fresh fd owned from here on.
        let stream = unsafe { std::net::TcpStream::from_raw_fd(conn) };
        // Works for unix stream sockets too: only read/write are used.
        serve_one(stream, request_ms);
        in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn serve_one(mut conn: std::net::TcpStream, request_ms: u64) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    skip_request_head(&mut conn);
    if request_ms > 0 {
        std::thread::sleep(Duration::from_millis(request_ms));
    }
    let body = format!("{}\n", process::id());
    let _ = write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}
