//! minder-gen: writes minder's man pages and shell completions, generated from
//! the real command line (`minder::cli::Cli`) so they can never drift from it.
//!
//! `minder-gen OUTDIR` writes `OUTDIR/man/*.1` (minder.1, and one page per
//! subcommand such as minder-ctl.1) and `OUTDIR/completions/` (`minder.bash`,
//! `_minder` for zsh, `minder.fish`). `packaging/build-deb.sh` runs it; it is
//! a build tool and is not installed.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;
use clap_mangen::roff::{bold, italic, roman, Inline, Roff};
use clap_mangen::Man;
use minder::cli::Cli;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [out] = args.as_slice() else {
        eprintln!("usage: minder-gen OUTDIR   (writes OUTDIR/man and OUTDIR/completions)");
        return ExitCode::from(2);
    };
    match generate(Path::new(out)) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("minder-gen: {e}");
            ExitCode::from(1)
        }
    }
}

/// Writes every page and completion under `out`; returns the files written.
fn generate(out: &Path) -> io::Result<Vec<PathBuf>> {
    let man_dir = out.join("man");
    let completion_dir = out.join("completions");
    fs::create_dir_all(&man_dir)?;
    fs::create_dir_all(&completion_dir)?;
    let mut written = Vec::new();

    // One page per subcommand (minder-daemon.1, minder-ctl-status.1, ...),
    // then minder.1 again with the sections a whole-program page needs.
    clap_mangen::generate_to(Cli::command(), &man_dir)?;
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let main_page = man_dir.join("minder.1");
    let mut file = fs::File::create(&main_page)?;
    render_main_page(cmd, &mut file)?;
    file.flush()?;
    let mut pages: Vec<PathBuf> = fs::read_dir(&man_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "1"))
        .collect();
    pages.sort();
    written.extend(pages);

    for (shell, name) in [
        (Shell::Bash, "minder.bash"),
        (Shell::Zsh, "_minder"),
        (Shell::Fish, "minder.fish"),
    ] {
        let path = completion_dir.join(name);
        let mut file = fs::File::create(&path)?;
        clap_complete::generate(shell, &mut Cli::command(), "minder", &mut file);
        file.flush()?;
        written.push(path);
    }
    Ok(written)
}

/// minder.1: clap's sections, then what the command line alone does not say.
fn render_main_page(cmd: clap::Command, w: &mut dyn Write) -> io::Result<()> {
    let man = Man::new(cmd);
    man.render_title(w)?;
    man.render_name_section(w)?;
    man.render_synopsis_section(w)?;
    man.render_description_section(w)?;
    man.render_options_section(w)?;
    man.render_subcommands_section(w)?;

    let mut roff = Roff::new();
    section(
        &mut roff,
        "CONFIGURATION",
        &[&[roman(
            "A TOML file names the programs to supervise ([program.NAME] tables) and minder's own \
             settings ([supervisor]). Without -c, minder reads ./minder.toml, then \
             /etc/minder/minder.toml. `minder check` prints every error as FILE:LINE:COL: message. \
             As root, minder refuses to start when the config file, a file it includes, or a \
             directory above them can be changed by another user than root (like sshd's \
             StrictModes), since minder runs the commands they name; `minder daemon \
             --insecure-config` overrides this.",
        )]],
    );
    section(
        &mut roff,
        "SYSTEMD",
        &[&[roman(
            "Run as a Type=notify service (the packaged unit is minder.service), minder sends \
             READY=1 once every autostart program has been started (it is running, or in backoff, \
             fatal or exited: a broken program never holds back the start), STATUS= with a summary \
             such as \"12 running, 1 backoff, 0 unhealthy\", RELOADING=1 and READY=1 around a \
             reload, STOPPING=1 on shutdown, and WATCHDOG=1 at half of WATCHDOG_USEC from its \
             event loop. Programs with notify = true get minder's own notify socket, never \
             systemd's.",
        )]],
    );
    tagged(
        &mut roff,
        "FILES",
        &[
            (
                "/etc/minder/minder.toml",
                "The config read when -c is absent and ./minder.toml does not exist.",
            ),
            (
                "/etc/minder/conf.d/*.toml",
                "More [program.*] tables, included by the packaged config.",
            ),
            (
                "/run/minder/minder.sock",
                "The control socket when minder runs as root (otherwise \
                 $XDG_RUNTIME_DIR/minder.sock, or /tmp/minder-UID/minder.sock).",
            ),
            (
                "/run/minder/minder-notify.sock",
                "The NOTIFY_SOCKET given to programs with notify or watchdog.",
            ),
            (
                "/var/log/minder",
                "Captured output of the programs when minder runs as root.",
            ),
            (
                "/usr/lib/systemd/system/minder.service",
                "The systemd unit of the Debian package.",
            ),
        ],
    );
    tagged(
        &mut roff,
        "ENVIRONMENT",
        &[
            (
                "MINDER_SOCKET",
                "The control socket `minder ctl` uses when -s is not given.",
            ),
            (
                "MINDER_LOG",
                "A tracing filter (such as debug) for minder's own log; overrides log_level.",
            ),
            (
                "NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID",
                "Set by systemd for minder itself (see SYSTEMD). Never passed on to the programs.",
            ),
        ],
    );
    tagged(
        &mut roff,
        "SIGNALS",
        &[
            (
                "SIGTERM, SIGINT",
                "Stop every program in reverse dependency order within shutdown_timeout, then \
                 exit 0. A second one kills what is left at once.",
            ),
            (
                "SIGHUP",
                "Reload the config (as `minder ctl reload`): an invalid file changes nothing.",
            ),
        ],
    );
    tagged(
        &mut roff,
        "EXIT STATUS",
        &[
            (
                "minder daemon",
                "0 after a shutdown; 1 when the config is invalid or untrusted, or the control \
                 socket cannot be created.",
            ),
            ("minder check", "0 when the config is valid, 1 otherwise."),
            (
                "minder ctl",
                "0 success; 1 the request failed; 2 usage error; 3 `status` found a selected \
                 process not running or unhealthy; 4 the daemon could not be reached.",
            ),
        ],
    );
    roff.control("SH", ["SEE ALSO"]);
    roff.text([
        bold("minder-daemon"),
        roman("(1), "),
        bold("minder-check"),
        roman("(1), "),
        bold("minder-ctl"),
        roman("(1), "),
        bold("systemd.service"),
        roman("(5), "),
        bold("sd_notify"),
        roman("(3). The configuration reference is "),
        italic("docs/config.md"),
        roman(" in minder's source."),
    ]);
    roff.to_writer(w)?;
    man.render_version_section(w)
}

/// A section of plain paragraphs.
fn section(roff: &mut Roff, title: &str, paragraphs: &[&[Inline]]) {
    roff.control("SH", [title]);
    for (i, p) in paragraphs.iter().enumerate() {
        if i > 0 {
            roff.control("PP", []);
        }
        roff.text(p.to_vec());
    }
}

/// A section of `TERM` + indented explanation entries.
fn tagged(roff: &mut Roff, title: &str, entries: &[(&str, &str)]) {
    roff.control("SH", [title]);
    for (term, text) in entries {
        roff.control("TP", []);
        roff.text([bold(*term)]);
        roff.text([roman(*text)]);
    }
}
