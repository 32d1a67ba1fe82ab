//! `dos-server status`: the API server's `/status` answer as tables for a terminal.

use std::fmt::Write as _;

use serde_json::Value;

/// Renders a `/status` answer: data servers (live, then down), redundancy, maintenance jobs
/// and requests. Fields missing from the answer show as `n/a`.
pub fn table(s: &Value) -> String {
    let mut out = String::new();
    let now = s["time"].as_u64().unwrap_or(0);
    let mut rows: Vec<[String; 7]> = Vec::new();
    for srv in s["live"].as_array().into_iter().flatten() {
        let mut notes = Vec::new();
        if srv["draining"].as_bool() == Some(true) {
            notes.push("draining");
        }
        if srv["suspect"].as_bool() == Some(true) {
            notes.push("suspect");
        }
        rows.push([
            "live".into(),
            text(&srv["id"]),
            text(&srv["addr"]),
            text(&srv["shards"]),
            bytes(&srv["disk_used_bytes"]),
            bytes(&srv["disk_free_bytes"]),
            notes.join(", "),
        ]);
    }
    for srv in s["down"].as_array().into_iter().flatten() {
        let seen = srv["last_seen"].as_u64().unwrap_or(0);
        rows.push([
            "DOWN".into(),
            text(&srv["id"]),
            text(&srv["addr"]),
            String::new(),
            String::new(),
            String::new(),
            format!("last seen {} s ago", now.saturating_sub(seen)),
        ]);
    }
    let _ = writeln!(out, "DATA SERVERS");
    if rows.is_empty() {
        let _ = writeln!(out, "  (none heard)");
    } else {
        write_table(
            &mut out,
            ["STATE", "ID", "ADDRESS", "SHARDS", "USED", "FREE", "NOTES"],
            &rows,
        );
    }
    let r = &s["redundancy"];
    let _ = writeln!(out, "\nREDUNDANCY");
    let live = s["live"].as_array().map_or(0, Vec::len);
    let down = s["down"].as_array().map_or(0, Vec::len);
    let _ = writeln!(out, "  live data servers  {live}");
    let _ = writeln!(out, "  down data servers  {down}");
    let _ = writeln!(out, "  repairs queued     {}", text(&r["repairs_queued"]));
    let _ = writeln!(out, "  shards rebuilt     {}", text(&r["shards_rebuilt"]));
    let _ = writeln!(out, "  degraded reads     {}", text(&r["degraded_reads"]));
    let _ = writeln!(out, "\nMAINTENANCE");
    let jobs = s["maintenance"].as_array().cloned().unwrap_or_default();
    if jobs.is_empty() {
        let _ = writeln!(out, "  (no job running)");
    } else {
        let rows: Vec<[String; 4]> = jobs
            .iter()
            .map(|j| {
                let progress = match (j["work"]["finished"].as_u64(), j["work"]["total"].as_u64()) {
                    (Some(f), Some(t)) if t > 0 => {
                        let unit = j["work"]["unit"].as_str().unwrap_or("");
                        format!("{}% ({f}/{t} {unit})", (f.saturating_mul(100) / t).min(100))
                    }
                    _ => "running".into(),
                };
                let counts = j["counts"]
                    .as_object()
                    .map(|c| {
                        c.iter()
                            .map(|(k, v)| format!("{k} {v}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default();
                let elapsed = j["elapsed_ms"].as_u64().unwrap_or(0) / 1000;
                [text(&j["job"]), progress, format!("{elapsed} s"), counts]
            })
            .collect();
        write_table(&mut out, ["JOB", "PROGRESS", "ELAPSED", "COUNTS"], &rows);
    }
    let _ = writeln!(out, "\nREQUESTS");
    let q = &s["requests"];
    if q.is_null() {
        let _ = writeln!(out, "  (this server records no metrics)");
    } else {
        let rate = |v: &Value| v.as_f64().map_or("n/a".into(), |x| format!("{x:.1}"));
        let _ = writeln!(out, "  requests/s         {}", rate(&q["per_sec"]));
        let _ = writeln!(out, "  errors/s           {}", rate(&q["errors_per_sec"]));
        let _ = writeln!(out, "  requests           {}", text(&q["total"]));
        let _ = writeln!(out, "  client errors 4xx  {}", text(&q["client_errors"]));
        let _ = writeln!(out, "  server errors 5xx  {}", text(&q["server_errors"]));
    }
    out
}

/// A byte count as a table cell (KiB, MiB … with one decimal), missing as `n/a`.
fn bytes(v: &Value) -> String {
    let Some(n) = v.as_u64() else {
        return "n/a".into();
    };
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let (mut x, mut i) = (n as f64, 0);
    while x >= 1024.0 && i < units.len() - 1 {
        x /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{x:.1} {}", units[i])
    }
}

/// A JSON value as a table cell: strings bare, missing as `n/a`.
fn text(v: &Value) -> String {
    match v {
        Value::Null => "n/a".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Left-aligned columns two spaces apart, indented by two.
fn write_table<const N: usize>(out: &mut String, head: [&str; N], rows: &[[String; N]]) {
    let mut width = head.map(str::len);
    for row in rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |out: &mut String, cells: Vec<&str>| {
        let mut l = String::from(" ");
        for (cell, w) in cells.iter().zip(width) {
            let _ = write!(l, " {cell:<w$}");
        }
        let _ = writeln!(out, "{}", l.trim_end());
    };
    line(out, head.to_vec());
    for row in rows {
        line(out, row.iter().map(String::as_str).collect());
    }
}
