//! `report.html`: the report's Markdown as one HTML page that any browser shows offline
//! (figures linked relatively, as in the Markdown). Only the Markdown the report writes is
//! understood: headings, paragraphs, tables, images, fenced code, `code` and **bold**.

use std::fmt::Write as _;

/// The page's style: readable tables and figures, no external resources.
const STYLE: &str = "body{font-family:sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;color:#222}\
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}\
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}\
figure{margin:1.5em 0}img{max-width:100%;height:auto;border:1px solid #ddd}\
figcaption{color:#555;font-size:.9em}pre{background:#f6f6f6;padding:1em;overflow-x:auto}";

/// Escapes the characters HTML gives a meaning to.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Inline Markdown: `code` and **bold**, the rest escaped.
fn inline(text: &str) -> String {
    let mut out = String::new();
    for (i, piece) in text.split('`').enumerate() {
        if i % 2 == 1 {
            write!(out, "<code>{}</code>", escape(piece)).ok();
            continue;
        }
        for (j, part) in piece.split("**").enumerate() {
            if j % 2 == 1 {
                write!(out, "<strong>{}</strong>", escape(part)).ok();
            } else {
                out.push_str(&escape(part));
            }
        }
    }
    out
}

/// The cells of a table row `| a | b |`.
fn cells(row: &str) -> Vec<&str> {
    let row = row.trim().trim_start_matches('|').trim_end_matches('|');
    row.split('|').map(str::trim).collect()
}

/// `![alt](src)` as `(alt, src)`.
fn image(line: &str) -> Option<(&str, &str)> {
    let rest = line.trim().strip_prefix("![")?;
    let (alt, rest) = rest.split_once("](")?;
    Some((alt, rest.strip_suffix(')')?))
}

/// Converts the report's Markdown to a complete HTML page titled `title`.
pub fn from_markdown(markdown: &str, title: &str) -> String {
    let mut body = String::new();
    let mut paragraph: Vec<&str> = Vec::new();
    let mut lines = markdown.lines().peekable();
    let flush = |paragraph: &mut Vec<&str>, body: &mut String| {
        if !paragraph.is_empty() {
            writeln!(body, "<p>{}</p>", inline(&paragraph.join(" "))).ok();
            paragraph.clear();
        }
    };
    while let Some(line) = lines.next() {
        let trimmed = line.trim();
        if trimmed.is_empty() {
            flush(&mut paragraph, &mut body);
        } else if let Some(level) = (1..=6).find(|&n| trimmed.starts_with(&format!("{} ", "#".repeat(n)))) {
            flush(&mut paragraph, &mut body);
            writeln!(body, "<h{level}>{}</h{level}>", inline(trimmed[level + 1..].trim())).ok();
        } else if trimmed.starts_with("```") {
            flush(&mut paragraph, &mut body);
            let mut code = String::new();
            for code_line in lines.by_ref().take_while(|l| !l.trim().starts_with("```")) {
                code.push_str(code_line);
                code.push('\n');
            }
            writeln!(body, "<pre><code>{}</code></pre>", escape(&code)).ok();
        } else if trimmed.starts_with('|') {
            flush(&mut paragraph, &mut body);
            body.push_str("<table>\n");
            let mut rows = vec![trimmed];
            while let Some(next) = lines.next_if(|l| l.trim().starts_with('|')) {
                rows.push(next.trim());
            }
            let has_header =
                rows.get(1).is_some_and(|r| cells(r).iter().all(|c| c.chars().all(|ch| "-: ".contains(ch))));
            for (i, row) in rows.iter().enumerate() {
                if has_header && i == 1 {
                    continue;
                }
                let tag = if has_header && i == 0 { "th" } else { "td" };
                let row_cells: String = cells(row).iter().map(|c| format!("<{tag}>{}</{tag}>", inline(c))).collect();
                writeln!(body, "<tr>{row_cells}</tr>").ok();
            }
            body.push_str("</table>\n");
        } else if let Some((alt, src)) = image(trimmed) {
            flush(&mut paragraph, &mut body);
            writeln!(
                body,
                "<figure><img src=\"{}\" alt=\"{}\"><figcaption>{}</figcaption></figure>",
                escape(src),
                escape(alt),
                inline(alt)
            )
            .ok();
        } else {
            paragraph.push(trimmed);
        }
    }
    flush(&mut paragraph, &mut body);
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}</body>\n</html>\n",
        escape(title)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_element_the_report_writes_becomes_html() {
        let md = "# Run <1>\n\nSome `code` and **bold** text\non two lines.\n\n| a | b |\n|---|---|\n| **x** | 1 & 2 |\n\n\
                  ### Caption\n\n![A figure](figures/loss.png)\n\n```json\n{\"k\": \"<v>\"}\n```\n";
        let html = from_markdown(md, "T");
        for expected in [
            "<title>T</title>",
            "<h1>Run &lt;1&gt;</h1>",
            "<p>Some <code>code</code> and <strong>bold</strong> text on two lines.</p>",
            "<tr><th>a</th><th>b</th></tr>\n<tr><td><strong>x</strong></td><td>1 &amp; 2</td></tr>",
            "<h3>Caption</h3>",
            "<img src=\"figures/loss.png\" alt=\"A figure\">",
            "<pre><code>{&quot;k&quot;: &quot;&lt;v&gt;&quot;}\n</code></pre>",
        ] {
            assert!(html.contains(expected), "missing {expected:?} in\n{html}");
        }
        assert!(!html.contains("---"), "the separator row is not a table row");
    }
}
