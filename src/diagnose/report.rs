//! The two forms of a [`Report`]: a checklist for people (colours only when asked, i.e. on a
//! terminal) and JSON for machines. Both carry the same facts; neither decides anything.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{json, Value};

use super::{Failure, Report, ServerReport, Step, StepStatus};

/// Width of the step-name column.
const NAME_WIDTH: usize = 8;
/// Width of the timing column.
const TIME_WIDTH: usize = 9;

/// ANSI styles, or nothing when colours are off.
struct Style {
    on: bool,
}

impl Style {
    fn paint(&self, code: &str, text: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
    fn green(&self, text: &str) -> String {
        self.paint("32", text)
    }
    fn red(&self, text: &str) -> String {
        self.paint("1;31", text)
    }
    fn yellow(&self, text: &str) -> String {
        self.paint("33", text)
    }
    fn dim(&self, text: &str) -> String {
        self.paint("2", text)
    }
    fn bold(&self, text: &str) -> String {
        self.paint("1", text)
    }
}

/// The checklist: per upstream, per server, one line per step (✓ ok, ✗ failed, – does not
/// apply, · not run), the facts under their step, and for a failure its cause and fix.
pub fn render_text(report: &Report, color: bool) -> String {
    let style = Style { on: color };
    let mut out = String::new();
    let _ = writeln!(out, "causeway diagnose: {}", report.config);
    for upstream in &report.upstreams {
        let _ = writeln!(
            out,
            "\n{} ({})",
            style.bold(&format!("upstream {}", upstream.name)),
            upstream.protocol
        );
        for server in &upstream.servers {
            render_server(&mut out, server, &style);
        }
    }
    let total = report.servers().count();
    let failing = report.servers().filter(|s| !s.ok()).count();
    let verdict = if failing == 0 {
        style.green(&format!("all {total} servers ok"))
    } else {
        style.red(&format!(
            "{} of {total} servers ok, {failing} failing",
            total - failing
        ))
    };
    let _ = writeln!(out, "\n{verdict}");
    out
}

fn render_server(out: &mut String, server: &ServerReport, style: &Style) {
    let verdict = match &server.failure {
        None => style.green("ok"),
        Some(Failure {
            cause: Some(cause), ..
        }) => style.red(&format!("FAILED: {cause}")),
        Some(Failure { step, .. }) => style.red(&format!("FAILED at {}", step.as_str())),
    };
    let _ = writeln!(out, "  {}  {verdict}", server.server);
    let indent = " ".repeat(4 + 2 + NAME_WIDTH + 1 + TIME_WIDTH + 3);
    for step in &server.steps {
        let _ = writeln!(out, "{}", step_line(step, style));
        for fact in &step.facts {
            let _ = writeln!(out, "{indent}{}", style.dim(fact));
        }
    }
    if let Some(failure) = &server.failure {
        let cause = match failure.cause {
            Some(cause) => {
                let info = cause.info();
                let proxy_status = info
                    .proxy_status
                    .map(|e| format!(", Proxy-Status error={e}"))
                    .unwrap_or_default();
                format!(
                    "{} (the proxy answers {}{proxy_status})",
                    style.red(cause.name()),
                    info.status.as_u16()
                )
            }
            None => "none: this is the server's own answer".to_string(),
        };
        let _ = writeln!(out, "    cause: {cause}");
        if let Some(hint) = &failure.hint {
            let _ = writeln!(out, "    fix:   {}", style.yellow(hint));
        }
    }
}

fn step_line(step: &Step, style: &Style) -> String {
    let (mark, summary) = match step.status {
        StepStatus::Ok => (style.green("✓"), step.summary.clone()),
        StepStatus::Failed => (style.red("✗"), step.summary.clone()),
        StepStatus::Skipped => (style.dim("–"), style.dim(&step.summary)),
        StepStatus::NotRun => (style.dim("·"), style.dim("not run")),
    };
    let time = step.elapsed.map(fmt_elapsed).unwrap_or_default();
    format!(
        "    {mark} {:<NAME_WIDTH$} {time:>TIME_WIDTH$}   {summary}",
        step.name.as_str()
    )
}

/// `0.3 ms`, `12 ms`, `1.50 s`.
pub(super) fn fmt_elapsed(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.1} ms")
    } else if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

/// The report as JSON: `ok`, and per upstream and server the steps with `status`
/// (`ok` | `failed` | `skipped` | `not_run`), `ms`, `summary` and `facts`, plus the failure's
/// `cause`, `detail` and `hint`.
pub fn render_json(report: &Report) -> Value {
    json!({
        "config": report.config,
        "ok": report.ok(),
        "upstreams": report.upstreams.iter().map(|upstream| json!({
            "name": upstream.name,
            "protocol": upstream.protocol,
            "ok": upstream.servers.iter().all(ServerReport::ok),
            "servers": upstream.servers.iter().map(server_json).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

fn server_json(server: &ServerReport) -> Value {
    let failure = server.failure.as_ref();
    json!({
        "server": server.server,
        "ok": server.ok(),
        "failed_step": failure.map(|f| f.step.as_str()),
        "cause": failure.and_then(|f| f.cause).map(|c| c.name()),
        "status": failure.and_then(|f| f.cause).map(|c| c.info().status.as_u16()),
        "detail": failure.map(|f| f.detail.as_str()),
        "hint": failure.and_then(|f| f.hint.as_deref()),
        "steps": server.steps.iter().map(|step| json!({
            "step": step.name.as_str(),
            "status": step.status.as_str(),
            "ms": step.elapsed.map(|d| (d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0),
            "summary": step.summary,
            "facts": step.facts,
        })).collect::<Vec<_>>(),
    })
}
