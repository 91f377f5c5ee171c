//! The report as one self-contained HTML page: figures, tables and plots drawn as inline SVG, the report's
//! JSON embedded, no script and nothing fetched, so it opens from a file on a machine without network.

use std::fmt::Write as _;

use crate::report::{Report, dollars, ms, route_counts};

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

const W: f64 = 720.0;
const H: f64 = 260.0;
const PAD: f64 = 48.0;

/// One line of a chart: its name, colour and points.
type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// A line chart: each series is (name, colour, points); axes from 0 to the largest value.
fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series<'_>],
    hline: Option<(f64, &str)>,
) -> String {
    let xs = series.iter().flat_map(|s| s.2.iter().map(|p| p.0));
    let ys = series.iter().flat_map(|s| s.2.iter().map(|p| p.1));
    let (x0, x1) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
        (a.min(x), b.max(x))
    });
    let y1 = ys.chain(hline.map(|h| h.0)).fold(0.0f64, f64::max);
    let (x0, x1) = if x0.is_finite() && x1 > x0 {
        (x0, x1)
    } else {
        (0.0, 1.0)
    };
    let y1 = if y1 > 0.0 { y1 * 1.05 } else { 1.0 };
    let px = |x: f64| PAD + (x - x0) / (x1 - x0) * (W - 2.0 * PAD);
    let py = |y: f64| H - PAD - y / y1 * (H - 2.0 * PAD);
    let mut o = String::new();
    let _ = write!(
        o,
        r#"<figure><figcaption>{}</figcaption><svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{}">"#,
        esc(title),
        esc(title)
    );
    let _ = write!(
        o,
        r##"<line x1="{PAD}" y1="{b}" x2="{r}" y2="{b}" stroke="#555"/><line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{b}" stroke="#555"/>"##,
        b = H - PAD,
        r = W - PAD
    );
    for i in 0..=4 {
        let v = y1 * f64::from(i) / 4.0;
        let _ = write!(
            o,
            r##"<text x="{}" y="{}" font-size="10" text-anchor="end">{}</text><line x1="{PAD}" x2="{}" y1="{y}" y2="{y}" stroke="#eee"/>"##,
            PAD - 4.0,
            py(v) + 3.0,
            short(v),
            W - PAD,
            y = py(v)
        );
    }
    for i in 0..=4 {
        let v = x0 + (x1 - x0) * f64::from(i) / 4.0;
        let _ = write!(
            o,
            r#"<text x="{}" y="{}" font-size="10" text-anchor="middle">{}</text>"#,
            px(v),
            H - PAD + 14.0,
            short(v)
        );
    }
    let _ = write!(
        o,
        r#"<text x="{}" y="{}" font-size="11" text-anchor="middle">{}</text><text x="12" y="{}" font-size="11" transform="rotate(-90 12 {})" text-anchor="middle">{}</text>"#,
        W / 2.0,
        H - 8.0,
        esc(x_label),
        H / 2.0,
        H / 2.0,
        esc(y_label)
    );
    if let Some((y, label)) = hline {
        let _ = write!(
            o,
            r##"<line x1="{PAD}" x2="{}" y1="{y}" y2="{y}" stroke="#c00" stroke-dasharray="4 3"/><text x="{}" y="{}" font-size="10" fill="#c00" text-anchor="end">{}</text>"##,
            W - PAD,
            W - PAD,
            py(y) - 3.0,
            esc(label),
            y = py(y)
        );
    }
    for (i, (name, colour, points)) in series.iter().enumerate() {
        let path: Vec<String> = points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let _ = write!(
            o,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        for (x, y) in points.iter().filter(|_| points.len() <= 32) {
            let _ = write!(
                o,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"/>"#,
                px(*x),
                py(*y)
            );
        }
        let _ = write!(
            o,
            r#"<rect x="{}" y="{}" width="10" height="10" fill="{colour}"/><text x="{}" y="{}" font-size="11">{}</text>"#,
            PAD + 8.0 + 190.0 * i as f64,
            10.0,
            PAD + 22.0 + 190.0 * i as f64,
            19.0,
            esc(name)
        );
    }
    o.push_str("</svg></figure>");
    o
}

/// A short axis label.
fn short(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 10.0 {
        format!("{v:.0}")
    } else if a >= 0.01 {
        format!("{v:.2}")
    } else {
        format!("{v:.1e}")
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:24px;color:#222}table{border-collapse:collapse;margin:8px 0 20px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child,th:first-child{text-align:left}th{background:#f4f4f4}figure{margin:12px 0}figcaption{font-weight:600}.note{color:#555}.broken{color:#b00;font-weight:600}";

/// The page.
pub fn page(r: &Report) -> String {
    let mut o = String::new();
    let _ = write!(
        o,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>sluice simulate: {}</title><style>{STYLE}</style></head><body>",
        esc(&r.trace.path)
    );
    let t = &r.trace;
    let _ = write!(
        o,
        "<h1>Replay of {} against {}</h1><p>{} requests ({}) over {:.1} s{}.</p>",
        esc(&t.path),
        esc(&r.config),
        t.requests,
        t.kind,
        t.recorded_seconds,
        if t.speed_up == 1.0 {
            String::new()
        } else {
            format!(", replayed {}x faster", t.speed_up)
        }
    );
    if let Some(c) = &t.chain {
        let _ = write!(
            o,
            "<p id=\"chain\" class=\"{}\">Audit chain: {}</p>",
            if c.intact { "note" } else { "broken" },
            esc(&c.summary)
        );
    }
    let s = &r.summary;
    let _ = write!(
        o,
        "<h2>Summary</h2><table><tr><th>requests</th><td id=\"requests\">{}</td></tr><tr><th>refused</th><td id=\"refused\">{}</td></tr><tr><th>cloud, at list price</th><td id=\"cloud-usd\">{}</td></tr><tr><th>local nodes, busy or idle</th><td id=\"local-usd\">{}</td></tr><tr><th>of which idle</th><td id=\"local-idle-usd\">{}</td></tr><tr><th>total</th><td id=\"total-usd\">{}</td></tr><tr><th>local traffic at the reference cloud price</th><td id=\"equivalent-usd\">{}</td></tr><tr><th>time to first token over {:.2} s</th><td id=\"misses\">{}</td></tr></table>",
        s.requests,
        s.refused,
        dollars(&s.cloud),
        dollars(&s.local),
        dollars(&s.local_idle),
        dollars(&s.total),
        dollars(&s.cloud_equivalent_of_local),
        r.objective_seconds,
        s.objective_misses
    );

    // Cost over time, cumulative.
    let mut acc = (0.0, 0.0, 0.0);
    let mut local = Vec::new();
    let mut cloud = Vec::new();
    let mut equivalent = Vec::new();
    for p in &r.over_time {
        acc.0 += p.local_usd;
        acc.1 += p.cloud_usd;
        acc.2 += p.cloud_equivalent_usd;
        let x = p.start_seconds / 60.0;
        local.push((x, acc.0));
        cloud.push((x, acc.1));
        equivalent.push((x, acc.2));
    }
    o.push_str(&line_chart(
        "Cost over time, cumulative (USD)",
        "minutes",
        "USD",
        &[
            ("local nodes", "#2a7", local),
            ("cloud", "#36c", cloud),
            ("local traffic at cloud price", "#c80", equivalent),
        ],
        None,
    ));

    o.push_str("<h2>Routes</h2><table><tr><th>route</th><th>requests</th><th>prompt tokens</th><th>answer tokens</th><th>cost</th><th>ttft p50 ms</th><th>p95</th><th>p99</th><th>over objective</th><th>recorded requests</th><th>recorded cost</th><th>recorded ttft p50 ms</th><th>p95</th></tr>");
    for row in &r.routes {
        let rec = row.recorded.as_ref();
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&row.route),
            row.requests,
            row.prompt_tokens,
            row.completion_tokens,
            dollars(&row.cost),
            ms(row.ttft.p50_ms),
            ms(row.ttft.p95_ms),
            ms(row.ttft.p99_ms),
            row.objective_misses,
            rec.map_or("-".into(), |r| r.requests.to_string()),
            rec.map_or("-".into(), |r| dollars(&r.cost)),
            ms(rec.and_then(|r| r.ttft.p50_ms)),
            ms(rec.and_then(|r| r.ttft.p95_ms)),
        );
    }
    o.push_str("</table>");

    if let Some(c) = &r.changes {
        let mut froms: Vec<&str> = c.matrix.iter().map(|m| m.from.as_str()).collect();
        let mut tos: Vec<&str> = c.matrix.iter().map(|m| m.to.as_str()).collect();
        froms.sort_unstable();
        froms.dedup();
        tos.sort_unstable();
        tos.dedup();
        let max = c.matrix.iter().map(|m| m.requests).max().unwrap_or(1).max(1);
        let _ = write!(
            o,
            "<h2>Route matrix</h2><p><span id=\"changed\">{}</span> request(s) change route or rule. Rows: recorded route; columns: replayed route.</p><table id=\"matrix\"><tr><th>recorded \\ replayed</th>",
            c.changed
        );
        for to in &tos {
            let _ = write!(o, "<th>{}</th>", esc(to));
        }
        o.push_str("</tr>");
        for from in &froms {
            let _ = write!(o, "<tr><td>{}</td>", esc(from));
            for to in &tos {
                let n = c
                    .matrix
                    .iter()
                    .find(|m| m.from == *from && m.to == *to)
                    .map_or(0, |m| m.requests);
                let alpha = n as f64 / max as f64 * 0.6;
                let colour = if from == to { "42,119,85" } else { "204,68,0" };
                let _ = write!(o, "<td style=\"background:rgba({colour},{alpha:.2})\">{n}</td>");
            }
            o.push_str("</tr>");
        }
        o.push_str("</table>");
        if !c.by_rule.is_empty() {
            o.push_str("<table><tr><th>rule (replayed)</th><th>changed requests</th></tr>");
            for (rule, n) in &c.by_rule {
                let _ = write!(o, "<tr><td>{}</td><td>{n}</td></tr>", esc(rule));
            }
            o.push_str("</table>");
        }
    }

    o.push_str("<h2>Tenants</h2><table><tr><th>tenant</th><th>requests</th><th>routes</th><th>cost</th><th>at cloud price (local)</th><th>ttft p50 ms</th><th>p95</th><th>over objective</th></tr>");
    for row in &r.tenants {
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&row.tenant),
            row.requests,
            esc(&route_counts(&row.by_route)),
            dollars(&row.cost),
            dollars(&row.cloud_equivalent),
            ms(row.ttft.p50_ms),
            ms(row.ttft.p95_ms),
            row.objective_misses
        );
    }
    o.push_str("</table>");

    if !r.sweep.is_empty() {
        let p = |f: fn(&crate::report::Percentiles) -> Option<f64>| -> Vec<(f64, f64)> {
            r.sweep
                .iter()
                .filter_map(|row| Some((f64::from(row.nodes), f(&row.local_ttft)?)))
                .collect()
        };
        o.push_str("<h2>Nodes</h2>");
        o.push_str(&line_chart(
            "Local time to first token by node count (ms)",
            "nodes",
            "ms",
            &[
                ("p50", "#2a7", p(|q| q.p50_ms)),
                ("p95", "#c80", p(|q| q.p95_ms)),
                ("p99", "#c00", p(|q| q.p99_ms)),
            ],
            Some((r.objective_seconds * 1000.0, "objective")),
        ));
        let cost: Vec<(f64, f64)> = r
            .sweep
            .iter()
            .map(|row| (f64::from(row.nodes), row.total.usd))
            .collect();
        o.push_str(&line_chart(
            "Total cost by node count (USD)",
            "nodes",
            "USD",
            &[("total", "#36c", cost)],
            None,
        ));
        o.push_str("<table id=\"sweep\"><tr><th>nodes</th><th>total</th><th>cloud</th><th>local</th><th>over objective</th><th>local ttft p50 ms</th><th>p95</th><th>p99</th><th>utilised</th></tr>");
        for row in &r.sweep {
            let _ = write!(
                o,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                row.nodes,
                dollars(&row.total),
                dollars(&row.cloud),
                dollars(&row.local),
                row.objective_misses,
                ms(row.local_ttft.p50_ms),
                ms(row.local_ttft.p95_ms),
                ms(row.local_ttft.p99_ms),
                row.local_utilisation
                    .map_or("-".into(), |u| format!("{:.1}%", u * 100.0))
            );
        }
        o.push_str("</table>");
    }

    if let Some(l) = &r.fleet.local {
        let _ = write!(
            o,
            "<h2>Fleet</h2><p>{} node(s) &times; {} slots (queue {}), prefill {:.0} tokens/s, decode {:.1} tokens/s per stream, {:.2}&times; at full batch, ${:.4} per node-hour.</p><ul>",
            l.nodes,
            l.slots,
            l.max_waiting,
            l.prefill_tokens_per_second,
            l.decode_tokens_per_second,
            l.batch_speedup,
            l.usd_per_hour
        );
        for (k, v) in &r.fleet.sources {
            let _ = write!(o, "<li class=\"note\">{}: {}</li>", esc(k), esc(v));
        }
        o.push_str("</ul>");
    }
    if !r.notes.is_empty() {
        o.push_str("<h2>Notes</h2><ul>");
        for n in &r.notes {
            let _ = write!(o, "<li class=\"note\">{}</li>", esc(n));
        }
        o.push_str("</ul>");
    }
    // The figures as data, for whoever wants them from the page. `</` cannot end the script early.
    let json = serde_json::to_string(r).unwrap_or_default().replace("</", "<\\/");
    let _ = write!(
        o,
        "<script type=\"application/json\" id=\"report-data\">{json}</script></body></html>"
    );
    o
}
