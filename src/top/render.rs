//! Draws a [`Model`] into a ratatui frame: the process table (only the rows
//! on screen), the events or the followed log below it, and a status line
//! that is also where the filter and the `y/n` prompt are typed.

use std::borrow::Cow;
use std::time::Duration;

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Row as TableRow, Table, TableState};
use ratatui::Frame;

use super::model::{in_balancers, Link, Mode, Model, Row};
use crate::text::{sanitize, short_bytes, short_duration};

const HEADER: [&str; 9] = [
    "NAME",
    "STATE",
    "PID",
    "UPTIME",
    "HEALTH",
    "RESTARTS",
    "CPU%",
    "MEM",
    "DESCRIPTION",
];

/// The keys, as `?` lists them.
pub const HELP: &[(&str, &str)] = &[
    ("↑ ↓  j k", "select a process"),
    ("PgUp PgDn  g G", "a page up or down, first, last"),
    ("/", "filter by name (Enter keeps it, Esc clears it)"),
    (
        "s  S  r",
        "start, stop, restart the selected process (asks y/n)",
    ),
    ("l", "follow the selected process's log (again: close it)"),
    ("tab", "the log's other stream (stdout / stderr)"),
    ("Esc", "close the log, else clear the filter"),
    ("?", "this help (any key closes it)"),
    ("q  Ctrl-C", "quit"),
];

/// Draws the whole screen; `title` names the daemon (its socket).
pub fn draw(frame: &mut Frame, model: &mut Model, title: &str) {
    let area = frame.area();
    let bottom = if model.log.is_some() {
        Constraint::Percentage(45)
    } else {
        Constraint::Length(8.min(area.height / 3))
    };
    let [top, table, below, status] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        bottom,
        Constraint::Length(1),
    ])
    .areas(area);
    frame.render_widget(Paragraph::new(title_line(model, title)), top);
    draw_table(frame, model, table);
    if model.log.is_some() {
        draw_log(frame, model, below);
    } else {
        draw_events(frame, model, below);
    }
    frame.render_widget(Paragraph::new(status_line(model)), status);
    if model.mode == Mode::Help {
        draw_help(frame, area);
    }
}

fn title_line(model: &Model, title: &str) -> Line<'static> {
    let total = model.rows().len();
    let mut spans = vec![Span::styled(
        format!("minder top  {title}  "),
        Style::new().add_modifier(Modifier::BOLD),
    )];
    spans.push(Span::raw(if model.filter.is_empty() {
        format!("{total} processes")
    } else {
        format!(
            "{} of {total} processes match /{}",
            model.visible_len(),
            sanitize(&model.filter)
        )
    }));
    match &model.link {
        Link::Up => {}
        Link::Connecting => spans.push(Span::raw("  connecting...")),
        Link::Down(reason) => spans.push(Span::styled(
            format!(
                "  daemon not answering ({}); reconnecting every second",
                sanitize(reason)
            ),
            Style::new().fg(Color::White).bg(Color::Red).bold(),
        )),
    }
    Line::from(spans)
}

fn state_style(state: &str) -> Style {
    Style::new().fg(match state {
        "running" => Color::Green,
        "starting" | "stopping" => Color::Yellow,
        "backoff" => Color::Magenta,
        "exited" | "fatal" => Color::Red,
        _ => Color::DarkGray,
    })
}

fn health_style(health: &str) -> Style {
    match health {
        "healthy" => Style::new().fg(Color::Green),
        "unhealthy" => Style::new().fg(Color::Red).bold(),
        "starting" => Style::new().fg(Color::Yellow),
        _ => Style::new(),
    }
}

fn dash<T>(value: Option<T>, show: impl FnOnce(T) -> String) -> String {
    value.map_or_else(|| "-".to_string(), show)
}

/// The DESCRIPTION cell: the load balancers' standing (when registered),
/// the daemon's description (a backoff's includes the countdown of
/// `next_start_secs`), and predecessors still draining.
fn description(info: &crate::control::protocol::ProcessInfo) -> String {
    let mut text = String::new();
    if let Some(backends) = &info.register {
        text.push_str(if in_balancers(info) {
            "[in] "
        } else {
            "[out] "
        });
        for (backend, outcome) in backends.iter().filter(|(_, o)| o.as_str() != "ok") {
            text.push_str(&format!("[{backend}: {outcome}] "));
        }
    }
    text.push_str(&info.description);
    if !info.draining.is_empty() {
        text.push_str(&format!("; {} draining", info.draining.len()));
    }
    sanitize(&text).into_owned()
}

fn cells(row: &Row) -> [String; 9] {
    let p = &row.info;
    let live = p.pid.is_some();
    [
        sanitize(&p.name).into_owned(),
        p.state.clone(),
        dash(p.pid, |pid| pid.to_string()),
        dash(p.uptime_secs.filter(|_| live), |s| {
            short_duration(Duration::from_secs_f64(s.max(0.0)))
        }),
        p.health.clone(),
        p.restarts.to_string(),
        dash(row.cpu_percent.filter(|_| live), |c| format!("{c:.1}")),
        dash(p.memory_bytes.filter(|_| live), short_bytes),
        description(p),
    ]
}

fn draw_table(frame: &mut Frame, model: &mut Model, area: Rect) {
    // The header takes a line; only the rows that fit are built.
    let page = area.height.saturating_sub(1) as usize;
    model.scroll_to_cursor(page);
    let end = (model.offset + page).min(model.visible_len());
    let shown: Vec<(&Row, [String; 9])> = (model.offset..end)
        .filter_map(|n| model.visible_row(n))
        .map(|row| (row, cells(row)))
        .collect();
    let mut widths: [usize; 9] = HEADER.map(str::len);
    for (_, cells) in &shown {
        for (w, cell) in widths.iter_mut().zip(cells) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let rows = shown.iter().map(|(row, cells)| {
        let styled = cells.iter().enumerate().map(|(i, cell)| {
            let span = Span::raw(cell.clone());
            match i {
                1 => span.style(state_style(&row.info.state)),
                4 => span.style(health_style(&row.info.health)),
                _ => span,
            }
        });
        TableRow::new(styled)
    });
    let constraints = widths.iter().enumerate().map(|(i, &w)| {
        if i + 1 == HEADER.len() {
            Constraint::Fill(1)
        } else {
            Constraint::Length(w as u16)
        }
    });
    let table = Table::new(rows, constraints)
        .header(TableRow::new(HEADER).style(Style::new().add_modifier(Modifier::REVERSED)))
        .row_highlight_style(Style::new().bg(Color::Blue).fg(Color::White));
    let mut state =
        TableState::default().with_selected(model.cursor().map(|c| c.saturating_sub(model.offset)));
    frame.render_stateful_widget(table, area, &mut state);
}

fn draw_events(frame: &mut Frame, model: &Model, area: Rect) {
    let block = Block::new().borders(Borders::TOP).title(" events ");
    let height = block.inner(area).height as usize;
    let skip = model.events.len().saturating_sub(height);
    let lines: Vec<Line> = model
        .events
        .iter()
        .skip(skip)
        .map(|e| {
            let text = sanitize(&e.to_string()).into_owned();
            Line::styled(text, state_style(&e.to))
        })
        .collect();
    frame.render_widget(Paragraph::new(lines).block(block), area);
}

fn draw_log(frame: &mut Frame, model: &Model, area: Rect) {
    let Some(log) = &model.log else { return };
    let stream = if log.stderr { "stderr" } else { "stdout" };
    let mut title = format!(
        " log of {} ({stream}; tab: other stream, l: close) ",
        log.name
    );
    if let Some(reason) = &log.ended {
        title.push_str(&format!("ended: {reason} "));
    }
    let block = Block::new()
        .borders(Borders::TOP)
        .title(sanitize(&title).into_owned());
    let height = block.inner(area).height as usize;
    let partial = (!log.partial.is_empty()).then_some(&log.partial);
    let total = log.lines.len() + usize::from(partial.is_some());
    let lines: Vec<Line> = log
        .lines
        .iter()
        .chain(partial)
        .skip(total.saturating_sub(height))
        .map(|l| Line::raw(sanitize(l).into_owned()))
        .collect();
    frame.render_widget(Paragraph::new(lines).block(block), area);
}

fn status_line(model: &Model) -> Line<'static> {
    let prompt = Style::new().fg(Color::Black).bg(Color::Yellow).bold();
    match &model.mode {
        Mode::Confirm(action, name) => Line::from(Span::styled(
            format!("{} {}? (y/n)", action.verb(), sanitize(name)),
            prompt,
        )),
        Mode::Filter => Line::from(vec![
            Span::styled("/", prompt),
            Span::raw(format!("{}_", sanitize(&model.filter))),
            Span::styled(
                "  (Enter: keep, Esc: clear)",
                Style::new().fg(Color::DarkGray),
            ),
        ]),
        Mode::Normal | Mode::Help => {
            let hint: Cow<str> = match &model.message {
                Some(m) => sanitize(m),
                None => Cow::Borrowed("? help  / filter  l log  s/S/r start/stop/restart  q quit"),
            };
            Line::from(Span::styled(
                hint.into_owned(),
                Style::new().fg(Color::DarkGray),
            ))
        }
    }
}

fn draw_help(frame: &mut Frame, area: Rect) {
    let width = 76.min(area.width);
    let height = (HELP.len() as u16 + 2).min(area.height);
    let popup = Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    };
    let lines: Vec<Line> = HELP
        .iter()
        .map(|(keys, what)| {
            Line::from(vec![
                Span::styled(format!("{keys:>15}  "), Style::new().bold()),
                Span::raw(*what),
            ])
        })
        .collect();
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" keys (any key closes) ")),
        popup,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::top::model::tests::{event, process, status};
    use crate::top::model::Key;
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;
    use std::time::Instant;

    fn screen(
        model: &mut Model,
        width: u16,
        height: u16,
    ) -> (Vec<String>, ratatui::buffer::Buffer) {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal
            .draw(|frame| draw(frame, model, "/run/minder.sock"))
            .unwrap();
        let buffer = terminal.backend().buffer().clone();
        let lines = (0..height)
            .map(|y| {
                (0..width)
                    .map(|x| buffer[(x, y)].symbol())
                    .collect::<String>()
                    .trim_end()
                    .to_string()
            })
            .collect();
        (lines, buffer)
    }

    fn words(line: &str) -> Vec<&str> {
        line.split_whitespace().collect()
    }

    fn sample() -> Model {
        let mut web = process("web:0", "running", Some(4242));
        web.health = "healthy".into();
        web.cpu_secs = 1.0;
        let mut worker = process("worker", "backoff", None);
        worker.restarts = 2;
        worker.description = "exited with code 1 2s ago; next try in 3.2s".into();
        worker.next_start_secs = Some(3.2);
        let mut model = Model::new();
        let t0 = Instant::now();
        model.apply_status(
            status(vec![
                web.clone(),
                worker.clone(),
                process("db", "stopped", None),
            ]),
            t0,
        );
        web.cpu_secs = 1.25;
        model.apply_status(
            status(vec![web, worker, process("db", "stopped", None)]),
            t0 + Duration::from_secs(1),
        );
        model
    }

    #[test]
    fn a_row_per_process_with_its_columns_and_colour() {
        let mut model = sample();
        let (lines, buffer) = screen(&mut model, 120, 20);
        assert!(lines[0].starts_with("minder top  /run/minder.sock  3 processes"));
        assert_eq!(words(&lines[1]), HEADER);
        assert_eq!(
            words(&lines[2]),
            ["web:0", "running", "4242", "1m", "healthy", "0", "25.0", "12.3M"]
        );
        assert_eq!(
            words(&lines[3]),
            [
                "worker", "backoff", "-", "-", "none", "2", "-", "-", "exited", "with", "code",
                "1", "2s", "ago;", "next", "try", "in", "3.2s"
            ]
        );
        assert_eq!(
            words(&lines[4]),
            ["db", "stopped", "-", "-", "none", "0", "-", "-"]
        );
        // Columns line up under their header.
        for (column, row) in [("PID", 2), ("CPU%", 2), ("MEM", 2), ("DESCRIPTION", 3)] {
            let x = lines[1].find(column).unwrap();
            assert_ne!(lines[row].as_bytes()[x], b' ', "{column}: {lines:#?}");
            assert_eq!(lines[row].as_bytes()[x - 1], b' ', "{column}: {lines:#?}");
        }
        let state_x = lines[1].find("STATE").unwrap() as u16;
        assert_eq!(buffer[(state_x, 3)].fg, Color::Magenta, "backoff");
        assert_eq!(buffer[(state_x, 4)].fg, Color::DarkGray, "stopped");
        // The selection (the first row) is highlighted.
        assert_eq!(buffer[(state_x + 10, 2)].bg, Color::Blue);
        assert_eq!(buffer[(state_x + 10, 3)].bg, Color::Reset);
        assert!(lines[19].contains("? help"), "{lines:#?}");
    }

    #[test]
    fn a_crashed_process_and_its_event_show_without_a_new_sample() {
        let mut model = sample();
        model.apply_event(event(
            "web:0",
            "running",
            "backoff",
            "exited with code 3",
            None,
        ));
        let (lines, buffer) = screen(&mut model, 120, 20);
        assert_eq!(
            words(&lines[2])[..5],
            ["web:0", "backoff", "-", "-", "healthy"]
        );
        let event_line = lines
            .iter()
            .position(|l| l.contains("web:0 running -> backoff (exited with code 3)"))
            .unwrap_or_else(|| panic!("no event line: {lines:#?}"));
        assert!(lines[event_line - 1].contains("events"), "{lines:#?}");
        assert_eq!(buffer[(0, event_line as u16)].fg, Color::Magenta);
    }

    #[test]
    fn a_registered_process_says_whether_it_is_in_its_balancers() {
        let mut web = process("web:0", "running", Some(1));
        web.register = Some([("haproxy".to_string(), "ok".to_string())].into());
        let mut api = process("api:0", "running", Some(2));
        api.health = "unhealthy".into();
        api.register = Some([("file".to_string(), "write: no space".to_string())].into());
        let mut model = Model::new();
        model.apply_status(status(vec![web, api]), Instant::now());
        let (lines, _) = screen(&mut model, 120, 12);
        assert!(lines[2].ends_with("[in]"), "{lines:#?}");
        assert!(
            lines[3].ends_with("[out] [file: write: no space]"),
            "{lines:#?}"
        );
    }

    #[test]
    fn the_filter_shows_the_matching_rows_and_what_is_typed() {
        let mut model = sample();
        model.key(Key::Char('/'));
        model.key(Key::Char('W'));
        let (lines, _) = screen(&mut model, 100, 20);
        assert!(
            lines[0].ends_with("2 of 3 processes match /W"),
            "{lines:#?}"
        );
        assert_eq!(words(&lines[2])[0], "web:0");
        assert_eq!(words(&lines[3])[0], "worker");
        assert_eq!(lines[4], "");
        assert!(lines[19].starts_with("/W_"), "{lines:#?}");
    }

    #[test]
    fn help_lists_every_key() {
        let mut model = sample();
        model.key(Key::Char('?'));
        let (lines, _) = screen(&mut model, 100, 24);
        let text = lines.join("\n");
        assert!(text.contains("keys (any key closes)"), "{text}");
        for (keys, what) in HELP {
            assert!(text.contains(keys) && text.contains(what), "{keys}: {text}");
        }
        model.key(Key::Char('x'));
        let (lines, _) = screen(&mut model, 100, 24);
        assert!(!lines.join("\n").contains("keys (any key closes)"));
    }

    #[test]
    fn the_confirm_prompt_names_the_action_and_the_process() {
        let mut model = sample();
        model.key(Key::Down);
        model.key(Key::Char('r'));
        let (lines, _) = screen(&mut model, 100, 20);
        assert_eq!(lines[19], "restart worker? (y/n)");
        model.key(Key::Char('n'));
        let (lines, _) = screen(&mut model, 100, 20);
        assert_eq!(lines[19], "restart worker: cancelled");
    }

    #[test]
    fn the_log_pane_shows_the_newest_lines_of_the_stream() {
        let mut model = sample();
        let Some(crate::top::model::Effect::Follow { generation, .. }) = model.key(Key::Char('l'))
        else {
            panic!("l follows")
        };
        let text: String = (1..=50).map(|i| format!("line {i}\n")).collect();
        model.apply_log(
            generation,
            &crate::control::protocol::TailChunk {
                name: "web:0".into(),
                stream: "stdout".into(),
                text: format!("{text}partial"),
                skipped_bytes: 0,
            },
        );
        let (lines, _) = screen(&mut model, 100, 30);
        let title = lines
            .iter()
            .position(|l| l.contains("log of web:0 (stdout"))
            .unwrap_or_else(|| panic!("{lines:#?}"));
        assert_eq!(lines[28], "partial", "{lines:#?}");
        assert_eq!(lines[27], "line 50");
        assert_eq!(lines[title + 1], format!("line {}", 50 - (27 - title - 1)));
    }

    #[test]
    fn only_the_rows_on_screen_are_drawn_and_the_selection_stays_on_screen() {
        let mut model = Model::new();
        model.apply_status(
            status(
                (0..1000)
                    .map(|i| process(&format!("p:{i:04}"), "running", Some(i + 100)))
                    .collect(),
            ),
            Instant::now(),
        );
        model.key(Key::End);
        let (lines, _) = screen(&mut model, 100, 20);
        let rows: Vec<&String> = lines.iter().filter(|l| l.starts_with("p:")).collect();
        assert_eq!(rows.last().map(|l| &l[..6]), Some("p:0999"), "{lines:#?}");
        assert_eq!(model.page, rows.len());
    }

    #[test]
    fn a_daemon_gone_is_a_line_on_screen() {
        let mut model = sample();
        model.disconnected("no such socket".into());
        let (lines, buffer) = screen(&mut model, 140, 20);
        let x = lines[0].find("daemon not answering").expect("the line");
        assert!(lines[0].ends_with("(no such socket); reconnecting every second"));
        assert_eq!(buffer[(x as u16, 0)].bg, Color::Red);
    }
}
