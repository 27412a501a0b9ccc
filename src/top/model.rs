//! What `ctl top` shows and how keys change it: status samples, events and
//! log output in, a new state and the requests to make out. No terminal and
//! no socket here, so every behaviour is a plain function call in the tests.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use crate::control::protocol::{ProcessInfo, StateEvent, StatusReply, TailChunk};

/// Events kept for the events pane (the newest shown).
pub const EVENTS_KEPT: usize = 200;
/// Log lines kept for the log pane (the newest shown).
pub const LOG_LINES_KEPT: usize = 2000;

/// A key, as `top` understands it (the terminal layer translates).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Up,
    Down,
    PageUp,
    PageDown,
    Home,
    End,
    Enter,
    Esc,
    Tab,
    Backspace,
    /// Ctrl-C: quits from anywhere.
    Interrupt,
    Char(char),
}

/// A request the user confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Stop,
    Restart,
}

impl Action {
    /// The verb, as in `ctl start`.
    pub fn verb(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Restart => "restart",
        }
    }
}

/// What the model asks of the world after a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Quit,
    /// Send `start`/`stop`/`restart` for this process.
    Act(Action, String),
    /// Follow this process's log (`stderr` or stdout), replacing any other;
    /// its chunks come back tagged with `generation`.
    Follow {
        name: String,
        stderr: bool,
        generation: u64,
    },
    /// Stop following a log.
    Unfollow,
}

/// Which input the keys go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Keys select, act, open the log.
    Normal,
    /// Typing the name filter (after `/`).
    Filter,
    /// `y` sends the action, any other key cancels.
    Confirm(Action, String),
    /// The key list (after `?`); any key closes it.
    Help,
}

/// One process row: the latest status entry and its CPU use since the
/// sample before.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub info: ProcessInfo,
    /// Percent of one core between the last two samples (`None` after the
    /// first sample of a process, or without a live process).
    pub cpu_percent: Option<f64>,
    sampled_at: Instant,
}

/// The log pane: one process's stdout or stderr, following.
#[derive(Debug, Clone, PartialEq)]
pub struct LogView {
    pub name: String,
    pub stderr: bool,
    pub generation: u64,
    pub lines: VecDeque<String>,
    /// The end of the output, not yet ended by a newline.
    pub partial: String,
    /// Why the stream ended, when it has.
    pub ended: Option<String>,
}

/// Whether the daemon answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// Nothing heard yet.
    Connecting,
    Up,
    /// Gone, with why; `top` tries again every second.
    Down(String),
}

/// Everything `top` shows.
#[derive(Debug)]
pub struct Model {
    rows: Vec<Row>,
    by_name: HashMap<String, usize>,
    /// Indices into `rows` of the processes the filter lets through, in order.
    visible: Vec<usize>,
    /// The selected process (kept by name across samples and filters).
    selected: Option<String>,
    /// Its position in `visible`.
    cursor: usize,
    /// The first visible row on screen, and how many fit (set by the renderer).
    pub offset: usize,
    pub page: usize,
    pub filter: String,
    pub mode: Mode,
    pub events: VecDeque<StateEvent>,
    pub log: Option<LogView>,
    pub link: Link,
    /// The outcome of the last action (`restart web:0: ok`), or a note.
    pub message: Option<String>,
    generation: u64,
}

impl Default for Model {
    fn default() -> Self {
        Model::new()
    }
}

impl Model {
    pub fn new() -> Model {
        Model {
            rows: Vec::new(),
            by_name: HashMap::new(),
            visible: Vec::new(),
            selected: None,
            cursor: 0,
            offset: 0,
            page: 1,
            filter: String::new(),
            mode: Mode::Normal,
            events: VecDeque::new(),
            log: None,
            link: Link::Connecting,
            message: None,
            generation: 0,
        }
    }

    /// Every process the daemon reported, in its order.
    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    /// How many processes the filter lets through.
    pub fn visible_len(&self) -> usize {
        self.visible.len()
    }

    /// The `n`th process the filter lets through.
    pub fn visible_row(&self, n: usize) -> Option<&Row> {
        self.visible.get(n).map(|&i| &self.rows[i])
    }

    /// The position of the selection among the visible rows.
    pub fn cursor(&self) -> Option<usize> {
        self.selected.as_ref().map(|_| self.cursor)
    }

    /// The selected process's name.
    pub fn selected(&self) -> Option<&str> {
        self.selected.as_deref()
    }

    /// A new `status` sample taken at `now`: the rows, and each process's
    /// CPU% from the change in `cpu_secs` since the previous sample.
    pub fn apply_status(&mut self, status: StatusReply, now: Instant) {
        let mut rows = Vec::with_capacity(status.processes.len());
        let mut by_name = HashMap::with_capacity(status.processes.len());
        for info in status.processes {
            let before = self.by_name.get(&info.name).map(|&i| &self.rows[i]);
            let cpu_percent = before.and_then(|b| cpu_percent(b, &info, now));
            by_name.insert(info.name.clone(), rows.len());
            rows.push(Row {
                info,
                cpu_percent,
                sampled_at: now,
            });
        }
        self.rows = rows;
        self.by_name = by_name;
        self.link = Link::Up;
        self.refilter();
    }

    /// A state, health or load-balancer change from the event stream, shown
    /// at once (the next sample brings the rest: uptime, restarts, ...).
    pub fn apply_event(&mut self, event: StateEvent) {
        if let Some(&i) = self.by_name.get(&event.name) {
            let info = &mut self.rows[i].info;
            if event.reason.starts_with("registration: ") {
                // An in/out change: the row shows it from state and health.
            } else if [&event.from, &event.to].iter().any(|h| is_health(h)) {
                info.health = event.to.clone();
            } else {
                info.state = event.to.clone();
                info.pid = event.pid.filter(|_| is_live(&event.to));
                if info.pid.is_none() {
                    info.uptime_secs = None;
                    info.memory_bytes = None;
                    self.rows[i].cpu_percent = None;
                }
                self.rows[i].info.description = event.reason.clone();
            }
        }
        if self.events.len() == EVENTS_KEPT {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    /// The daemon could not be reached (or went away).
    pub fn disconnected(&mut self, reason: String) {
        self.link = Link::Down(reason);
    }

    /// Output of the followed log; chunks of a log no longer shown are dropped.
    pub fn apply_log(&mut self, generation: u64, chunk: &TailChunk) {
        let Some(log) = self.log.as_mut().filter(|l| l.generation == generation) else {
            return;
        };
        if chunk.skipped_bytes > 0 {
            push_line(
                &mut log.lines,
                format!("... {} bytes skipped ...", chunk.skipped_bytes),
            );
        }
        log.partial.push_str(&chunk.text);
        let mut rest = log.partial.as_str();
        let mut complete = Vec::new();
        while let Some(i) = rest.find('\n') {
            complete.push(rest[..i].to_string());
            rest = &rest[i + 1..];
        }
        log.partial = rest.to_string();
        for line in complete {
            push_line(&mut log.lines, line);
        }
    }

    /// The followed log's stream ended (the process was removed, the daemon went away).
    pub fn log_ended(&mut self, generation: u64, reason: String) {
        if let Some(log) = self.log.as_mut().filter(|l| l.generation == generation) {
            log.ended = Some(reason);
        }
    }

    /// A key press, and what to do about it.
    pub fn key(&mut self, key: Key) -> Option<Effect> {
        if key == Key::Interrupt {
            return Some(Effect::Quit);
        }
        match std::mem::replace(&mut self.mode, Mode::Normal) {
            Mode::Help => None,
            Mode::Confirm(action, name) => match key {
                Key::Char('y' | 'Y') => {
                    self.message = Some(format!("{} {name}...", action.verb()));
                    Some(Effect::Act(action, name))
                }
                _ => {
                    self.message = Some(format!("{} {name}: cancelled", action.verb()));
                    None
                }
            },
            Mode::Filter => {
                match key {
                    Key::Enter => {}
                    Key::Esc => {
                        self.filter.clear();
                        self.refilter();
                    }
                    Key::Backspace => {
                        self.filter.pop();
                        self.refilter();
                        self.mode = Mode::Filter;
                    }
                    Key::Char(c) => {
                        self.filter.push(c);
                        self.refilter();
                        self.mode = Mode::Filter;
                    }
                    Key::Up | Key::Down | Key::PageUp | Key::PageDown | Key::Home | Key::End => {
                        self.navigate(key);
                        self.mode = Mode::Filter;
                    }
                    _ => self.mode = Mode::Filter,
                }
                None
            }
            Mode::Normal => self.normal_key(key),
        }
    }

    fn normal_key(&mut self, key: Key) -> Option<Effect> {
        match key {
            Key::Char('q') => return Some(Effect::Quit),
            Key::Char('?') => self.mode = Mode::Help,
            Key::Char('/') => self.mode = Mode::Filter,
            Key::Esc if self.log.is_some() => return self.close_log(),
            Key::Esc if !self.filter.is_empty() => {
                self.filter.clear();
                self.refilter();
            }
            Key::Char(c @ ('s' | 'S' | 'r')) => {
                let action = match c {
                    's' => Action::Start,
                    'S' => Action::Stop,
                    _ => Action::Restart,
                };
                if let Some(name) = self.selected.clone() {
                    self.mode = Mode::Confirm(action, name);
                }
            }
            Key::Char('l') => {
                if self.log.is_some() {
                    return self.close_log();
                }
                let name = self.selected.clone()?;
                return Some(self.follow(name, false));
            }
            Key::Tab => {
                let log = self.log.as_ref()?;
                let (name, stderr) = (log.name.clone(), !log.stderr);
                return Some(self.follow(name, stderr));
            }
            Key::Char('k') => self.navigate(Key::Up),
            Key::Char('j') => self.navigate(Key::Down),
            Key::Char('g') => self.navigate(Key::Home),
            Key::Char('G') => self.navigate(Key::End),
            _ => self.navigate(key),
        }
        None
    }

    fn follow(&mut self, name: String, stderr: bool) -> Effect {
        self.generation += 1;
        self.log = Some(LogView {
            name: name.clone(),
            stderr,
            generation: self.generation,
            lines: VecDeque::new(),
            partial: String::new(),
            ended: None,
        });
        Effect::Follow {
            name,
            stderr,
            generation: self.generation,
        }
    }

    fn close_log(&mut self) -> Option<Effect> {
        self.log = None;
        Some(Effect::Unfollow)
    }

    /// Moves the selection; other keys do nothing.
    fn navigate(&mut self, key: Key) {
        if self.visible.is_empty() {
            return;
        }
        let last = self.visible.len() - 1;
        let page = self.page.max(1);
        let cursor = match key {
            Key::Up => self.cursor.saturating_sub(1),
            Key::Down => (self.cursor + 1).min(last),
            Key::PageUp => self.cursor.saturating_sub(page),
            Key::PageDown => (self.cursor + page).min(last),
            Key::Home => 0,
            Key::End => last,
            _ => return,
        };
        self.select(cursor);
    }

    fn select(&mut self, cursor: usize) {
        self.cursor = cursor;
        self.selected = self
            .visible
            .get(cursor)
            .map(|&i| self.rows[i].info.name.clone());
    }

    /// Recomputes the visible rows after a sample or a filter change,
    /// keeping the selected process selected while it is visible.
    fn refilter(&mut self) {
        let filter = self.filter.to_lowercase();
        self.visible = self
            .rows
            .iter()
            .enumerate()
            .filter(|(_, r)| filter.is_empty() || r.info.name.to_lowercase().contains(&filter))
            .map(|(i, _)| i)
            .collect();
        let kept = self.selected.as_ref().and_then(|name| {
            let i = *self.by_name.get(name)?;
            self.visible.binary_search(&i).ok()
        });
        match kept {
            Some(cursor) => self.cursor = cursor,
            None => self.select(self.cursor.min(self.visible.len().saturating_sub(1))),
        }
    }

    /// Keeps the selection on screen in a table of `page` rows.
    pub fn scroll_to_cursor(&mut self, page: usize) {
        self.page = page.max(1);
        if self.cursor < self.offset {
            self.offset = self.cursor;
        } else if self.cursor >= self.offset + self.page {
            self.offset = self.cursor + 1 - self.page;
        }
        self.offset = self
            .offset
            .min(self.visible.len().saturating_sub(self.page));
    }
}

/// Whether `name` is a health only (`starting` is a state too; a health
/// change has one of these on a side).
fn is_health(name: &str) -> bool {
    matches!(name, "none" | "healthy" | "unhealthy")
}

/// Whether a process in `state` has a PID.
fn is_live(state: &str) -> bool {
    matches!(state, "starting" | "running" | "stopping")
}

/// CPU use between two samples of the same process, in percent of one core.
fn cpu_percent(before: &Row, now: &ProcessInfo, at: Instant) -> Option<f64> {
    if now.pid.is_none() || before.info.pid != now.pid {
        return None;
    }
    let wall = at.checked_duration_since(before.sampled_at)?.as_secs_f64();
    (wall > 0.0).then(|| ((now.cpu_secs - before.info.cpu_secs).max(0.0) / wall) * 100.0)
}

fn push_line(lines: &mut VecDeque<String>, line: String) {
    if lines.len() == LOG_LINES_KEPT {
        lines.pop_front();
    }
    lines.push_back(line);
}

/// Whether a process is in its load balancers by the rule of SPEC §5.2:
/// running, and healthy or without a health check.
pub fn in_balancers(info: &ProcessInfo) -> bool {
    info.state == "running" && matches!(info.health.as_str(), "healthy" | "none")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::Duration;

    pub fn process(name: &str, state: &str, pid: Option<i32>) -> ProcessInfo {
        ProcessInfo {
            uptime_secs: pid.map(|_| 75.0),
            memory_bytes: pid.map(|_| 12_900_000),
            ..ProcessInfo::example(name, state, pid)
        }
    }

    pub fn status(processes: Vec<ProcessInfo>) -> StatusReply {
        StatusReply { processes }
    }

    pub fn event(name: &str, from: &str, to: &str, reason: &str, pid: Option<i32>) -> StateEvent {
        StateEvent {
            time: "2026-12-04T11:00:00.000Z".into(),
            name: name.into(),
            program: name.into(),
            from: from.into(),
            to: to.into(),
            reason: reason.into(),
            pid,
            skipped_events: 0,
        }
    }

    fn names(model: &Model) -> Vec<String> {
        (0..model.visible_len())
            .map(|n| model.visible_row(n).unwrap().info.name.clone())
            .collect()
    }

    fn three() -> Model {
        let mut m = Model::new();
        m.apply_status(
            status(vec![
                process("web:0", "running", Some(10)),
                process("web:1", "running", Some(11)),
                process("worker", "backoff", None),
            ]),
            Instant::now(),
        );
        m
    }

    #[test]
    fn cpu_percent_is_the_change_in_cpu_secs_over_the_wall_time_between_samples() {
        let t0 = Instant::now();
        let mut m = Model::new();
        let mut web = process("web", "running", Some(10));
        web.cpu_secs = 1.0;
        m.apply_status(status(vec![web.clone()]), t0);
        assert_eq!(m.rows()[0].cpu_percent, None, "one sample says nothing");
        web.cpu_secs = 1.5;
        m.apply_status(status(vec![web.clone()]), t0 + Duration::from_secs(2));
        assert_eq!(m.rows()[0].cpu_percent, Some(25.0));
        // Another process under the same name (a restart) starts again.
        web.pid = Some(12);
        web.cpu_secs = 0.1;
        m.apply_status(status(vec![web]), t0 + Duration::from_secs(3));
        assert_eq!(m.rows()[0].cpu_percent, None);
    }

    #[test]
    fn an_event_changes_its_row_at_once() {
        let mut m = three();
        m.apply_event(event(
            "web:1",
            "running",
            "backoff",
            "exited with code 1",
            None,
        ));
        let web1 = &m.rows()[1].info;
        assert_eq!(
            (web1.state.as_str(), web1.pid, web1.description.as_str()),
            ("backoff", None, "exited with code 1")
        );
        m.apply_event(event("web:0", "healthy", "unhealthy", "503", Some(10)));
        assert_eq!(m.rows()[0].info.health, "unhealthy");
        assert_eq!(m.rows()[0].info.state, "running");
        m.apply_event(event("web:0", "unhealthy", "starting", "", Some(10)));
        assert_eq!(m.rows()[0].info.health, "starting");
        assert_eq!(m.rows()[0].info.state, "running");
        m.apply_event(event(
            "web:0",
            "in",
            "out",
            "registration: unhealthy",
            Some(10),
        ));
        assert_eq!(m.rows()[0].info.state, "running");
        assert_eq!(m.events.len(), 4);
    }

    #[test]
    fn the_events_kept_are_bounded() {
        let mut m = three();
        for _ in 0..EVENTS_KEPT + 10 {
            m.apply_event(event("worker", "starting", "backoff", "", None));
        }
        assert_eq!(m.events.len(), EVENTS_KEPT);
    }

    #[test]
    fn keys_move_the_selection_within_the_rows() {
        let mut m = three();
        assert_eq!(m.selected(), Some("web:0"));
        m.key(Key::Up);
        assert_eq!(m.selected(), Some("web:0"));
        m.key(Key::Char('j'));
        m.key(Key::Down);
        m.key(Key::Down);
        assert_eq!(m.selected(), Some("worker"));
        m.key(Key::Char('k'));
        assert_eq!(m.selected(), Some("web:1"));
        m.key(Key::Home);
        assert_eq!(m.cursor(), Some(0));
        m.key(Key::End);
        assert_eq!(m.cursor(), Some(2));
    }

    #[test]
    fn the_selection_follows_its_process_across_samples() {
        let mut m = three();
        m.key(Key::Down);
        // web:0 went away (a reload): web:1 is still the one selected.
        m.apply_status(
            status(vec![
                process("web:1", "running", Some(11)),
                process("worker", "backoff", None),
            ]),
            Instant::now(),
        );
        assert_eq!((m.selected(), m.cursor()), (Some("web:1"), Some(0)));
    }

    #[test]
    fn slash_filters_by_name_and_esc_clears_it() {
        let mut m = three();
        m.key(Key::Char('/'));
        assert_eq!(m.mode, Mode::Filter);
        for c in "WORK".chars() {
            m.key(Key::Char(c));
        }
        assert_eq!(names(&m), ["worker"]);
        assert_eq!(m.selected(), Some("worker"));
        m.key(Key::Backspace);
        m.key(Key::Enter);
        assert_eq!(m.mode, Mode::Normal);
        assert_eq!(m.filter, "WOR");
        // Keys act again once the filter is entered.
        assert_eq!(m.key(Key::Char('q')), Some(Effect::Quit));
        m.key(Key::Esc);
        assert_eq!(names(&m), ["web:0", "web:1", "worker"]);
        assert_eq!(m.selected(), Some("worker"));
        m.key(Key::Char('/'));
        m.key(Key::Char('x'));
        assert_eq!(names(&m), Vec::<String>::new());
        assert_eq!(m.selected(), None);
        assert_eq!(m.key(Key::Char('r')), None, "typed into the filter");
        m.key(Key::Enter);
        assert_eq!(m.key(Key::Char('r')), None, "nothing selected");
        assert_eq!(m.mode, Mode::Normal);
    }

    #[test]
    fn start_stop_and_restart_ask_first() {
        for (key, action) in [
            ('s', Action::Start),
            ('S', Action::Stop),
            ('r', Action::Restart),
        ] {
            let mut m = three();
            m.key(Key::Down);
            assert_eq!(m.key(Key::Char(key)), None);
            assert_eq!(m.mode, Mode::Confirm(action, "web:1".into()));
            assert_eq!(
                m.key(Key::Char('y')),
                Some(Effect::Act(action, "web:1".into()))
            );
            assert_eq!(m.mode, Mode::Normal);
            m.key(Key::Char(key));
            assert_eq!(m.key(Key::Char('n')), None);
            assert_eq!(m.mode, Mode::Normal);
            assert_eq!(
                m.message.as_deref(),
                Some(format!("{} web:1: cancelled", action.verb()).as_str())
            );
        }
    }

    #[test]
    fn quit_and_help() {
        let mut m = three();
        m.key(Key::Char('?'));
        assert_eq!(m.mode, Mode::Help);
        assert_eq!(m.key(Key::Char('q')), None, "any key closes the help");
        assert_eq!(m.mode, Mode::Normal);
        m.key(Key::Char('r'));
        assert_eq!(m.key(Key::Interrupt), Some(Effect::Quit));
        assert_eq!(Model::new().key(Key::Char('q')), Some(Effect::Quit));
    }

    #[test]
    fn l_follows_the_selected_log_and_tab_switches_stream() {
        let mut m = three();
        let Some(Effect::Follow {
            name,
            stderr: false,
            generation: first,
        }) = m.key(Key::Char('l'))
        else {
            panic!("l follows the log")
        };
        assert_eq!(name, "web:0");
        let chunk = |text: &str| TailChunk {
            name: "web:0".into(),
            stream: "stdout".into(),
            text: text.into(),
            skipped_bytes: 0,
        };
        m.apply_log(first, &chunk("one\ntw"));
        m.apply_log(first, &chunk("o\nthr"));
        let log = m.log.as_ref().unwrap();
        assert_eq!(log.lines, ["one", "two"]);
        assert_eq!(log.partial, "thr");
        let Some(Effect::Follow {
            stderr: true,
            generation: second,
            ..
        }) = m.key(Key::Tab)
        else {
            panic!("tab switches to stderr")
        };
        // Output of the stream left behind is not shown in the new one.
        m.apply_log(first, &chunk("late\n"));
        assert!(m.log.as_ref().unwrap().lines.is_empty());
        m.apply_log(second, &chunk("err\n"));
        assert_eq!(m.log.as_ref().unwrap().lines, ["err"]);
        assert_eq!(m.key(Key::Char('l')), Some(Effect::Unfollow));
        assert!(m.log.is_none());
        assert_eq!(m.key(Key::Tab), None);
    }

    #[test]
    fn the_screen_scrolls_to_keep_the_selection_visible() {
        let mut m = Model::new();
        m.apply_status(
            status(
                (0..1000)
                    .map(|i| process(&format!("p:{i}"), "running", Some(i + 100)))
                    .collect(),
            ),
            Instant::now(),
        );
        m.scroll_to_cursor(10);
        for _ in 0..15 {
            m.key(Key::Down);
        }
        m.scroll_to_cursor(10);
        assert_eq!((m.cursor(), m.offset), (Some(15), 6));
        m.key(Key::PageDown);
        m.scroll_to_cursor(10);
        assert_eq!((m.cursor(), m.offset), (Some(25), 16));
        m.key(Key::End);
        m.scroll_to_cursor(10);
        assert_eq!((m.cursor(), m.offset), (Some(999), 990));
        m.key(Key::Char('/'));
        m.key(Key::Char('9'));
        m.key(Key::Char('9'));
        m.key(Key::Char('8'));
        m.scroll_to_cursor(10);
        assert_eq!(names(&m), ["p:998"]);
        assert_eq!((m.cursor(), m.offset), (Some(0), 0));
    }
}
