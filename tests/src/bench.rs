//! What the benchmark programs (`src/bin/bench_*.rs`) share: the printed table (as
//! scripts/bench.d/*.py print theirs) and the cleanup of a run's processes.

/// Rows of `name, value, unit, baseline, ratio, note`, printed aligned.
pub struct Table {
    title: &'static str,
    rows: Vec<[String; 6]>,
}

impl Table {
    /// An empty table whose first column is headed `title`.
    pub fn new(title: &'static str) -> Table {
        Table {
            title,
            rows: Vec::new(),
        }
    }

    /// A measured row; with a baseline, its value and the ratio value / baseline.
    pub fn row(&mut self, name: &str, value: f64, unit: &str, baseline: Option<(&str, f64)>, note: &str) {
        let digits = if unit == "s" || value < 10.0 { 2 } else { 1 };
        let (baseline_text, ratio) = match baseline {
            Some((what, b)) => (
                format!("{what} {b:.digits$} {unit}"),
                if b > 0.0 {
                    format!("{:.2}", value / b)
                } else {
                    String::new()
                },
            ),
            None => (String::new(), String::new()),
        };
        self.rows.push([
            name.to_string(),
            format!("{value:.digits$}"),
            unit.to_string(),
            baseline_text,
            ratio,
            note.to_string(),
        ]);
    }

    /// A row with only a name and a note.
    pub fn note(&mut self, name: &str, note: &str) {
        self.rows.push([
            name.to_string(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            note.to_string(),
        ]);
    }

    /// Prints the header, a rule and the rows on standard output.
    pub fn print(&self) {
        let headers = [
            self.title,
            "value",
            "unit",
            "baseline (same run)",
            "ratio",
            "goal / note",
        ]
        .map(String::from);
        let widths: Vec<usize> = (0..6)
            .map(|i| {
                self.rows
                    .iter()
                    .chain([&headers])
                    .map(|r| r[i].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |r: &[String; 6]| {
            r.iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
        };
        let header = line(&headers).trim_end().to_string();
        println!("{header}");
        println!("{}", "-".repeat(header.chars().count()));
        for r in &self.rows {
            println!("{}", line(r).trim_end());
        }
    }
}

/// Kills (SIGKILL) every process whose command line holds one of `prefixes` (this run's
/// temp directories), again until none is left (up to five rounds, 100 ms apart).
pub fn kill_processes_naming(prefixes: &[String]) {
    for _ in 0..5 {
        let pids = crate::processes_naming(prefixes);
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            // SAFETY: kill(2) on a pid whose command line names this run's own temp dir.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Removes the entries of `root` whose path starts with one of `prefixes` (unless
/// HEARTH_E2E_KEEP is set).
pub fn remove_dirs_named(root: &std::path::Path, prefixes: &[String]) {
    if std::env::var("HEARTH_E2E_KEEP").is_ok() {
        return;
    }
    if let Ok(entries) = std::fs::read_dir(root) {
        for entry in entries.flatten() {
            let path = entry.path().to_string_lossy().into_owned();
            if prefixes.iter().any(|p| path.starts_with(p.as_str())) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}
