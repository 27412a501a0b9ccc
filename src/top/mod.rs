//! `minder ctl top`: a live view of every process over the control socket
//! (SPEC §5.5). [`model`] is the state and what keys do to it, [`render`]
//! draws it; this file owns the terminal and the connections: a status
//! sample every second, the `events` stream, `tail -f` of the selected log,
//! and the actions, each on a thread of its own sending to one channel. The
//! screen is redrawn when something arrives on it, never on a timer.

pub mod model;
pub mod render;

use std::io::{self, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread;
use std::time::{Duration, Instant};

use crossterm::event::{Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use crossterm::terminal::{self, EnterAlternateScreen, LeaveAlternateScreen};
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;

use crate::control::client::{self, Replies};
use crate::control::protocol::{Reply, Request, StateEvent, StatusReply, TailChunk};
use model::{Action, Effect, Key, Model};

/// How often `status` is asked for (CPU%, uptime, descriptions), and how
/// soon a lost daemon is tried again.
pub const SAMPLE: Duration = Duration::from_secs(1);

/// Messages applied at most between two redraws.
const BATCH: usize = 1024;

/// Lines of history shown when a log is opened.
const LOG_HISTORY: usize = 200;

/// What the threads tell the screen.
enum Msg {
    Key(Key),
    /// The terminal was resized.
    Redraw,
    Status(StatusReply, Instant),
    Event(StateEvent),
    Down(String),
    Log(u64, TailChunk),
    LogEnded(u64, String),
    /// The outcome of an action, for the status line.
    Note(String),
    /// SIGTERM, SIGHUP, SIGINT or SIGQUIT.
    Signal,
}

/// Runs `ctl top` on `socket` until `q`; exit 2 without a terminal.
pub fn run(socket: &Path) -> ExitCode {
    if !io::stdin().is_terminal() || !io::stdout().is_terminal() {
        eprintln!(
            "minder: ctl top needs a terminal on stdin and stdout; in scripts use `ctl status` or `ctl events`"
        );
        return ExitCode::from(2);
    }
    let (tx, rx) = mpsc::channel();
    // Blocked here, before any thread starts, so every thread inherits the
    // mask and only the waiting thread takes them: a `kill` of top restores
    // the terminal as `q` does.
    let signals = quit_signals();
    if signals.thread_block().is_ok() {
        let tx = tx.clone();
        thread::spawn(move || {
            if signals.wait().is_ok() {
                let _ = tx.send(Msg::Signal);
            }
        });
    }
    let mut terminal = match Screen::enter() {
        Ok(terminal) => terminal,
        Err(e) => {
            eprintln!("minder: ctl top: cannot set up the terminal: {e}");
            return ExitCode::from(1);
        }
    };
    spawn_keys(tx.clone());
    spawn_sampler(socket.to_path_buf(), tx.clone());
    spawn_events(socket.to_path_buf(), tx.clone());
    let result = event_loop(&mut terminal.0, socket, &tx, rx);
    drop(terminal);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("minder: ctl top: {e}");
            ExitCode::from(1)
        }
    }
}

fn quit_signals() -> nix::sys::signal::SigSet {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for signal in [
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGINT,
        Signal::SIGQUIT,
    ] {
        set.add(signal);
    }
    set
}

/// The terminal in raw mode on the alternate screen, given back as it was
/// when dropped, and by a panic anywhere.
struct Screen(Terminal<CrosstermBackend<io::Stdout>>);

impl Screen {
    fn enter() -> io::Result<Screen> {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
            // A panicking thread would leave the others drawing on a
            // terminal no longer in raw mode.
            std::process::exit(101);
        }));
        terminal::enable_raw_mode()?;
        let mut stdout = io::stdout();
        if let Err(e) = crossterm::execute!(stdout, EnterAlternateScreen) {
            restore();
            return Err(e);
        }
        match Terminal::new(CrosstermBackend::new(stdout)) {
            Ok(mut terminal) => {
                let _ = terminal.hide_cursor();
                Ok(Screen(terminal))
            }
            Err(e) => {
                restore();
                Err(e)
            }
        }
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        restore();
    }
}

/// Leaves raw mode and the alternate screen, with the cursor shown.
fn restore() {
    let _ = terminal::disable_raw_mode();
    let _ = crossterm::execute!(io::stdout(), LeaveAlternateScreen, crossterm::cursor::Show);
}

/// Redraws after each batch of messages until `q`.
fn event_loop(
    terminal: &mut Terminal<CrosstermBackend<io::Stdout>>,
    socket: &Path,
    tx: &Sender<Msg>,
    rx: Receiver<Msg>,
) -> io::Result<()> {
    let title = socket.display().to_string();
    let mut model = Model::new();
    // Kept until replaced or closed: dropping it ends its stream.
    let mut _log: Option<Follow> = None;
    loop {
        terminal.draw(|frame| render::draw(frame, &mut model, &title))?;
        let Ok(first) = rx.recv() else {
            return Ok(());
        };
        // What is already queued is one redraw (bounded, so that a flood
        // of log output still lets the screen show it).
        for msg in std::iter::once(first).chain(rx.try_iter().take(BATCH)) {
            let effect = match msg {
                Msg::Key(key) => model.key(key),
                Msg::Redraw => None,
                Msg::Status(status, at) => {
                    model.apply_status(status, at);
                    None
                }
                Msg::Event(event) => {
                    model.apply_event(event);
                    None
                }
                Msg::Down(reason) => {
                    model.disconnected(reason);
                    None
                }
                Msg::Log(generation, chunk) => {
                    model.apply_log(generation, &chunk);
                    None
                }
                Msg::LogEnded(generation, reason) => {
                    model.log_ended(generation, reason);
                    None
                }
                Msg::Note(note) => {
                    model.message = Some(note);
                    None
                }
                Msg::Signal => Some(Effect::Quit),
            };
            match effect {
                None => {}
                Some(Effect::Quit) => return Ok(()),
                Some(Effect::Act(action, name)) => spawn_action(socket, action, name, tx.clone()),
                Some(Effect::Follow {
                    name,
                    stderr,
                    generation,
                }) => {
                    _log = Follow::start(socket, name, stderr, generation, tx.clone());
                }
                Some(Effect::Unfollow) => _log = None,
            }
        }
    }
}

fn key_of(event: KeyEvent) -> Option<Key> {
    if event.kind == KeyEventKind::Release {
        return None;
    }
    let ctrl = event.modifiers.contains(KeyModifiers::CONTROL);
    Some(match event.code {
        KeyCode::Char('c') if ctrl => Key::Interrupt,
        KeyCode::Char(c) if !ctrl => Key::Char(c),
        KeyCode::Up => Key::Up,
        KeyCode::Down => Key::Down,
        KeyCode::PageUp => Key::PageUp,
        KeyCode::PageDown => Key::PageDown,
        KeyCode::Home => Key::Home,
        KeyCode::End => Key::End,
        KeyCode::Enter => Key::Enter,
        KeyCode::Esc => Key::Esc,
        KeyCode::Tab | KeyCode::BackTab => Key::Tab,
        KeyCode::Backspace => Key::Backspace,
        _ => return None,
    })
}

/// Keys and resizes, read as they come.
fn spawn_keys(tx: Sender<Msg>) {
    thread::spawn(move || loop {
        let msg = match crossterm::event::read() {
            Ok(Event::Key(key)) => match key_of(key) {
                Some(key) => Msg::Key(key),
                None => continue,
            },
            Ok(Event::Resize(..)) => Msg::Redraw,
            Ok(_) => continue,
            Err(_) => Msg::Key(Key::Interrupt),
        };
        if tx.send(msg).is_err() {
            return;
        }
    });
}

/// `status` once a [`SAMPLE`]: CPU% needs two samples, uptimes move, and
/// a daemon that is back is noticed.
fn spawn_sampler(socket: PathBuf, tx: Sender<Msg>) {
    thread::spawn(move || loop {
        let msg = match client::request(&socket, &Request::Status { names: vec![] }) {
            Ok(Some(Reply::Ok(payload))) => match serde_json::from_str(payload.get()) {
                Ok(status) => Msg::Status(status, Instant::now()),
                Err(e) => Msg::Down(format!("unexpected status reply: {e}")),
            },
            Ok(Some(Reply::Error(e))) => Msg::Down(e.message),
            Ok(None) => Msg::Down("the daemon closed the connection".into()),
            Err(e) => Msg::Down(e.to_string()),
        };
        if tx.send(msg).is_err() {
            return;
        }
        thread::sleep(SAMPLE);
    });
}

/// The `events` stream, opened again a [`SAMPLE`] after it ends.
fn spawn_events(socket: PathBuf, tx: Sender<Msg>) {
    thread::spawn(move || loop {
        let mut acknowledged = false;
        let mut sent = true;
        let result = client::stream(&socket, &Request::Events { names: vec![] }, |reply| {
            let Reply::Ok(payload) = reply else {
                return false;
            };
            // The first reply only says the stream has begun.
            if !std::mem::replace(&mut acknowledged, true) {
                return true;
            }
            match serde_json::from_str(payload.get()) {
                Ok(event) => {
                    sent = tx.send(Msg::Event(event)).is_ok();
                    sent
                }
                Err(_) => false,
            }
        });
        if !sent {
            return;
        }
        let reason = match result {
            Ok(()) => "the daemon closed the events stream".to_string(),
            Err(e) => e.to_string(),
        };
        if tx.send(Msg::Down(reason)).is_err() {
            return;
        }
        thread::sleep(SAMPLE);
    });
}

/// `start`/`stop`/`restart`, waiting for the outcome off the screen's thread.
fn spawn_action(socket: &Path, action: Action, name: String, tx: Sender<Msg>) {
    let socket = socket.to_path_buf();
    thread::spawn(move || {
        let names = vec![name.clone()];
        let request = match action {
            Action::Start => Request::Start { names, wait: true },
            Action::Stop => Request::Stop { names, wait: true },
            Action::Restart => Request::Restart { names, wait: true },
        };
        let verb = action.verb();
        let outcome = match client::request(&socket, &request) {
            Ok(Some(Reply::Ok(payload))) => {
                match serde_json::from_str::<crate::control::protocol::ActionReply>(payload.get()) {
                    Ok(reply) => match reply.results.iter().find(|r| !r.ok) {
                        Some(failed) => format!("{verb} {}: {}", failed.name, failed.message),
                        None => format!("{verb} {name}: done"),
                    },
                    Err(e) => format!("{verb} {name}: unexpected reply: {e}"),
                }
            }
            Ok(Some(Reply::Error(e))) => format!("{verb} {name}: {}", e.message),
            Ok(None) => format!("{verb} {name}: no reply"),
            Err(e) => format!("{verb} {name}: {e}"),
        };
        let _ = tx.send(Msg::Note(outcome));
    });
}

/// A followed log; dropping it closes its connection, which ends its thread.
struct Follow {
    closer: std::os::unix::net::UnixStream,
}

impl Follow {
    fn start(
        socket: &Path,
        name: String,
        stderr: bool,
        generation: u64,
        tx: Sender<Msg>,
    ) -> Option<Follow> {
        let request = Request::Tail {
            name,
            lines: LOG_HISTORY,
            stderr,
            follow: true,
        };
        let opened = Replies::open(socket, &request)
            .map_err(|e| e.to_string())
            .and_then(|replies| Ok((replies.closer().map_err(|e| e.to_string())?, replies)));
        let (closer, mut replies) = match opened {
            Ok(opened) => opened,
            Err(e) => {
                let _ = tx.send(Msg::LogEnded(generation, e));
                return None;
            }
        };
        thread::spawn(move || {
            let reason = loop {
                match replies.next_reply() {
                    Ok(Some(Reply::Ok(payload))) => match serde_json::from_str(payload.get()) {
                        Ok(chunk) => {
                            if tx.send(Msg::Log(generation, chunk)).is_err() {
                                return;
                            }
                        }
                        Err(e) => break format!("unexpected reply: {e}"),
                    },
                    Ok(Some(Reply::Error(e))) => break e.message,
                    Ok(None) => break "closed".to_string(),
                    Err(e) => break e.to_string(),
                }
            };
            let _ = tx.send(Msg::LogEnded(generation, reason));
        });
        Some(Follow { closer })
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        let _ = self.closer.shutdown(std::net::Shutdown::Both);
    }
}
