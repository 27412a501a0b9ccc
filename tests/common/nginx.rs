//! A real nginx for the upstream file tests: started in a test's directory
//! (`nginx -p DIR -c CONF -g 'daemon off;'`, every path it writes inside
//! DIR) with one server on a free loopback port proxying to the upstream
//! `web` of an `include`d file; stopped by PID.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::haproxy::{eventually, stop_child, START};

/// An nginx proxying 127.0.0.1:`port` to `upstream web`, read from `upstream`.
pub struct Nginx {
    /// Its directory (config, pid, logs, temp paths).
    pub dir: PathBuf,
    /// Its config file.
    pub conf: PathBuf,
    /// The file holding `upstream web { ... }`, included by the config.
    pub upstream: PathBuf,
    /// The proxying server's loopback port.
    pub port: u16,
    child: Option<Child>,
}

impl Nginx {
    /// Writes the config in `dir`; not started (the upstream file must exist first).
    pub fn new(dir: &Path) -> Nginx {
        let port = super::free_port();
        let upstream = dir.join("upstream-web.conf");
        let conf = dir.join("nginx.conf");
        std::fs::create_dir_all(dir.join("tmp")).expect("creating DIR/tmp");
        let d = dir.display();
        let text = format!(
            "pid {d}/nginx.pid;\n\
             error_log {d}/error.log notice;\n\
             worker_processes 1;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n\
             \x20   access_log off;\n\
             \x20   client_body_temp_path {d}/tmp/body;\n\
             \x20   proxy_temp_path {d}/tmp/proxy;\n\
             \x20   fastcgi_temp_path {d}/tmp/fastcgi;\n\
             \x20   uwsgi_temp_path {d}/tmp/uwsgi;\n\
             \x20   scgi_temp_path {d}/tmp/scgi;\n\
             \x20   include {};\n\
             \x20   server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://web; }} }}\n\
             }}\n",
            upstream.display()
        );
        std::fs::write(&conf, text).expect("writing nginx.conf");
        Nginx {
            dir: dir.to_path_buf(),
            conf,
            upstream,
            port,
            child: None,
        }
    }

    /// `nginx -p DIR -c CONF` followed by `extra`.
    pub fn argv(&self, extra: &[&str]) -> Vec<String> {
        let mut argv = vec![
            "nginx".to_string(),
            "-p".to_string(),
            self.dir.display().to_string(),
            "-c".to_string(),
            self.conf.display().to_string(),
        ];
        argv.extend(extra.iter().map(|s| s.to_string()));
        argv
    }

    /// The reload command for this instance (plain `nginx -s reload` would
    /// signal the system's nginx).
    pub fn reload_argv(&self) -> Vec<String> {
        self.argv(&["-s", "reload"])
    }

    /// Starts it in the foreground and waits until its server answers.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "nginx is already running");
        let log = std::fs::File::create(self.dir.join("nginx.out")).expect("nginx.out");
        let argv = self.argv(&["-g", "daemon off;"]);
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting nginx (is it installed?): {e}"));
        self.child = Some(child);
        let port = self.port;
        eventually("nginx answers", START, || {
            super::http_get(port, "/").is_ok()
        });
    }

    /// The master's live worker processes.
    pub fn workers(&self) -> Vec<i32> {
        let Some(master) = &self.child else {
            return Vec::new();
        };
        super::proc_children(master.id() as i32)
            .into_iter()
            .filter(|(_, state)| *state != 'Z')
            .map(|(pid, _)| pid)
            .collect()
    }

    /// What nginx wrote to its error log so far.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child);
        }
    }
}
