//! `synapse-compress-gen --preset NAME [--scale F] [--seed N] [--first-id N]`
//!
//! Writes Synapse-shaped state data (see `synapse_compress_testkit::generator`) to stdout
//! as SQL for psql: one COPY per table (`rooms`, `state_groups`, `state_group_edges`,
//! `state_groups_state`, `event_to_state_groups`), then `setval` on
//! `state_group_id_seq`. Load with
//! `synapse-compress-gen --preset small | psql -v ON_ERROR_STOP=1 -q DB`.
//!
//! Each table is written to a temporary file first and the files are concatenated to
//! stdout at the end, so memory stays small whatever the size. A summary goes to stderr.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use synapse_compress_core::GroupId;
use synapse_compress_testkit::generator::{self, copy_escape, GeneratedGroup, PRESETS};

const USAGE: &str =
    "usage: synapse-compress-gen --preset NAME [--scale F] [--seed N] [--first-id N]
  presets: headline, bigstate, manyrooms, forks, spamjoin, small, random
  --scale F      size factor (default 1; ignored by random)
  --seed N       random seed (default 1)
  --first-id N   first state group id (default: the preset's, 1 for most)
Writes SQL for psql to stdout, a summary to stderr.";

struct Args {
    preset: String,
    scale: f64,
    seed: u64,
    first_id: Option<GroupId>,
}

fn parse_args() -> Result<Args, String> {
    let mut preset = None;
    let mut scale = 1.0;
    let mut seed = 1;
    let mut first_id = None;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        if name == "-h" || name == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match name.as_str() {
            "--preset" => preset = Some(value()?),
            "--scale" => {
                let v = value()?;
                scale = v
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s > 0.0)
                    .ok_or_else(|| format!("--scale: not a positive number: {v}"))?;
            }
            "--seed" => {
                let v = value()?;
                seed = v
                    .parse()
                    .map_err(|_| format!("--seed: not an unsigned integer: {v}"))?;
            }
            "--first-id" => {
                let v = value()?;
                first_id = Some(
                    v.parse::<GroupId>()
                        .ok()
                        .filter(|n| *n >= 1)
                        .ok_or_else(|| format!("--first-id: not a positive integer: {v}"))?,
                );
            }
            _ => return Err(format!("unknown argument: {arg}")),
        }
    }
    let preset = preset.ok_or("--preset is required")?;
    if !PRESETS.contains(&preset.as_str()) {
        return Err(format!(
            "unknown preset {preset:?} (one of: {})",
            PRESETS.join(", ")
        ));
    }
    Ok(Args {
        preset,
        scale,
        seed,
        first_id,
    })
}

/// A private directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> io::Result<Self> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "synapse-compress-gen.{}.{nanos}",
            std::process::id()
        ));
        fs::create_dir(&path)?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The tables written through temporary files, in output order.
const TABLES: [(&str, &str); 4] = [
    ("state_groups", "id, room_id, event_id"),
    ("state_group_edges", "state_group, prev_state_group"),
    (
        "state_groups_state",
        "state_group, room_id, type, state_key, event_id",
    ),
    ("event_to_state_groups", "event_id, state_group"),
];

struct Writers {
    files: Vec<BufWriter<File>>,
    line: String,
    error: Option<io::Error>,
}

impl Writers {
    fn write_group(&mut self, g: &GeneratedGroup) -> io::Result<()> {
        use std::fmt::Write as _;
        let id = g.group.id;
        let mut room = String::new();
        copy_escape(g.group.room_id.as_deref().unwrap_or(""), &mut room);
        let mut event = String::new();
        copy_escape(&g.event_id, &mut event);
        let line = &mut self.line;

        line.clear();
        let _ = writeln!(line, "{id}\t{room}\t{event}");
        self.files[0].write_all(line.as_bytes())?;

        for p in &g.group.prevs {
            line.clear();
            let _ = writeln!(line, "{id}\t{p}");
            self.files[1].write_all(line.as_bytes())?;
        }

        for r in &g.group.rows {
            line.clear();
            let _ = write!(line, "{id}\t{room}\t");
            copy_escape(r.event_type(), line);
            line.push('\t');
            copy_escape(r.state_key(), line);
            line.push('\t');
            copy_escape(r.event_id(), line);
            line.push('\n');
            self.files[2].write_all(line.as_bytes())?;
        }

        line.clear();
        let _ = writeln!(line, "{event}\t{id}");
        self.files[3].write_all(line.as_bytes())
    }
}

fn run() -> Result<(), String> {
    let args = parse_args()?;
    let started = Instant::now();
    let mut spec = generator::preset(&args.preset, args.scale, args.seed)
        .ok_or_else(|| format!("unknown preset {}", args.preset))?;
    if let Some(first) = args.first_id {
        spec.first_id = first;
    }

    let tmp = TempDir::new().map_err(|e| format!("creating a temporary directory: {e}"))?;
    let mut paths = Vec::new();
    let mut files = Vec::new();
    for (table, _) in TABLES {
        let path = tmp.0.join(format!("{table}.copy"));
        let f = File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        files.push(BufWriter::with_capacity(1 << 20, f));
        paths.push(path);
    }
    let mut w = Writers {
        files,
        line: String::with_capacity(256),
        error: None,
    };
    let summary = generator::generate(&spec, &mut |g| {
        if w.error.is_none() {
            if let Err(e) = w.write_group(&g) {
                w.error = Some(e);
            }
        }
    });
    if let Some(e) = w.error.take() {
        return Err(format!("writing temporary files: {e}"));
    }
    for f in &mut w.files {
        f.flush()
            .map_err(|e| format!("writing temporary files: {e}"))?;
    }
    drop(w);
    let generated = started.elapsed();

    let stdout = io::stdout();
    let mut out = BufWriter::with_capacity(1 << 20, stdout.lock());
    let io_err = |e: io::Error| format!("writing stdout: {e}");
    let mut header = String::new();
    {
        use std::fmt::Write as _;
        let _ = writeln!(
            header,
            "-- synapse-compress-gen --preset {} --scale {} --seed {} --first-id {}",
            args.preset, args.scale, args.seed, spec.first_id
        );
        let _ = writeln!(
            header,
            "-- {} rooms, {} state groups ({} snapshots), {} edges, {} state rows",
            summary.rooms.len(),
            summary.groups,
            summary.snapshots,
            summary.edges,
            summary.rows
        );
        header.push_str("SET client_encoding = 'UTF8';\nBEGIN;\n");
        header.push_str(
            "COPY rooms (room_id, is_public, creator, room_version, has_auth_chain_index) FROM stdin;\n",
        );
        for r in &summary.rooms {
            copy_escape(&r.room_id, &mut header);
            header.push_str("\tf\t");
            match &r.creator {
                Some(c) => copy_escape(c, &mut header),
                None => header.push_str("\\N"),
            }
            header.push('\t');
            copy_escape(&r.room_version, &mut header);
            header.push_str("\tt\n");
        }
        header.push_str("\\.\n");
    }
    out.write_all(header.as_bytes()).map_err(io_err)?;
    let mut bytes = header.len() as u64;
    for ((table, columns), path) in TABLES.iter().zip(&paths) {
        let start = format!("COPY {table} ({columns}) FROM stdin;\n");
        out.write_all(start.as_bytes()).map_err(io_err)?;
        let mut f = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        bytes += start.len() as u64 + io::copy(&mut f, &mut out).map_err(io_err)?;
        out.write_all(b"\\.\n").map_err(io_err)?;
        bytes += 3;
        // Free the disk as we go.
        drop(f);
        let _ = fs::remove_file(path);
    }
    let mut tail = String::new();
    if let Some(max) = summary.max_id {
        // Never move the sequence backwards if the database already had higher ids.
        tail.push_str(&format!(
            "SELECT setval('state_group_id_seq', GREATEST({max}, (SELECT last_value FROM state_group_id_seq)));\n"
        ));
    }
    tail.push_str("COMMIT;\n");
    out.write_all(tail.as_bytes()).map_err(io_err)?;
    out.flush().map_err(io_err)?;
    bytes += tail.len() as u64;

    eprintln!(
        "synapse-compress-gen: preset {} scale {} seed {}: {} rooms, {} groups ({} snapshots, {} edges), {} rows, ids {}..={}, {:.1} MB SQL; generated in {:.2?}, total {:.2?}",
        args.preset,
        args.scale,
        args.seed,
        summary.rooms.len(),
        summary.groups,
        summary.snapshots,
        summary.edges,
        summary.rows,
        summary.min_id.unwrap_or(0),
        summary.max_id.unwrap_or(0),
        bytes as f64 / 1e6,
        generated,
        started.elapsed()
    );
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("synapse-compress-gen: {e}");
        std::process::exit(2);
    }
}
