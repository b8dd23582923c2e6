//! Turning the server's event streams into something readable: an SSE parser and a
//! renderer that prints model text to stdout and tool activity to stderr.

use std::io::Write;

use serde_json::Value;

/// One server-sent event.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SseFrame {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

/// Incremental SSE parser: chunks may split lines anywhere.
#[derive(Default)]
pub struct SseParser {
    buf: Vec<u8>,
    frame: SseFrame,
    has_data: bool,
}

impl SseParser {
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseFrame> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=pos).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if self.has_data {
                    out.push(std::mem::take(&mut self.frame));
                }
                self.frame = SseFrame::default();
                self.has_data = false;
                continue;
            }
            if line.starts_with(':') {
                continue; // keep-alive comment
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => self.frame.event = value.to_owned(),
                "id" => self.frame.id = Some(value.to_owned()),
                "data" => {
                    if self.has_data {
                        self.frame.data.push('\n');
                    }
                    self.frame.data.push_str(value);
                    self.has_data = true;
                }
                _ => {}
            }
        }
        out
    }
}

pub struct Renderer {
    json: bool,
    /// Model text was streamed and not yet ended with a newline.
    mid_line: bool,
    streamed: bool,
}

impl Renderer {
    pub fn new(json: bool) -> Self {
        Self { json, mid_line: false, streamed: false }
    }

    fn end_line(&mut self) {
        if self.mid_line {
            println!();
            self.mid_line = false;
        }
    }

    /// Renders a frame of a run stream.
    pub fn run_frame(&mut self, f: &SseFrame) {
        if self.json {
            let data: Value = serde_json::from_str(&f.data).unwrap_or(Value::String(f.data.clone()));
            println!("{}", serde_json::json!({"event": f.event, "id": f.id, "data": data}));
            return;
        }
        let v: Value = serde_json::from_str(&f.data).unwrap_or(Value::Null);
        match f.event.as_str() {
            "delta" => {
                print!("{}", v["text"].as_str().unwrap_or(""));
                let _ = std::io::stdout().flush();
                self.mid_line = true;
                self.streamed = true;
            }
            "model_responded" => {
                let d = &v["data"];
                if !self.streamed
                    && let Some(text) = d["content"].as_str()
                {
                    print!("{text}");
                    self.mid_line = true;
                }
                self.end_line();
                self.streamed = false;
                for call in d["tool_calls"].as_array().into_iter().flatten() {
                    eprintln!(
                        "  → {}({})",
                        call["name"].as_str().unwrap_or("?"),
                        call["arguments"].as_str().unwrap_or("")
                    );
                }
            }
            "tool_call_completed" => {
                let d = &v["data"];
                let mark = if d["is_error"].as_bool() == Some(true) { "✗" } else { "←" };
                eprintln!(
                    "  {mark} {}: {}",
                    d["name"].as_str().unwrap_or("?"),
                    one_line(d["output"].as_str().unwrap_or(""))
                );
            }
            "run_requires_action" => {
                self.end_line();
                let run = v["run_id"].as_str().unwrap_or("?");
                eprintln!("run {run} waits for client tool outputs:");
                for call in v["data"]["tool_calls"].as_array().into_iter().flatten() {
                    eprintln!(
                        "  {} {}({})",
                        call["id"].as_str().unwrap_or("?"),
                        call["name"].as_str().unwrap_or("?"),
                        call["arguments"].as_str().unwrap_or("")
                    );
                }
                eprintln!("submit with: stead runs submit {run} --output CALL_ID=TEXT");
            }
            "approval_requested" => {
                self.end_line();
                let d = &v["data"];
                let (id, kind) = (d["approval_id"].as_str().unwrap_or("?"), d["kind"].as_str().unwrap_or(""));
                eprintln!(
                    "  ⏸ {}({}) needs a decision (role {}): {}",
                    d["name"].as_str().unwrap_or("?"),
                    d["arguments"].as_str().unwrap_or(""),
                    d["role"].as_str().unwrap_or("?"),
                    d["reason"].as_str().unwrap_or("")
                );
                if kind == "outcome_unknown" {
                    eprintln!("    settle with: stead approvals resolve {id} --action retry|skip|fail");
                } else {
                    eprintln!("    decide with: stead approve {id}   or   stead deny {id} --reason …");
                }
            }
            "run_awaiting_approval" => {
                eprintln!("  waiting for approval (Ctrl-C leaves the run waiting; it is durable)")
            }
            "approval_decided" => {
                let d = &v["data"];
                eprintln!(
                    "  ▶ {} by {}{}",
                    d["decision"].as_str().unwrap_or("?"),
                    d["decided_by"].as_str().unwrap_or("?"),
                    d["reason"].as_str().map(|r| format!(": {r}")).unwrap_or_default()
                );
            }
            "run_failed" => {
                self.end_line();
                let e = &v["data"]["error"];
                eprintln!("run failed: {}: {}", e["code"].as_str().unwrap_or("?"), e["message"].as_str().unwrap_or(""));
            }
            "run_cancelled" => {
                self.end_line();
                eprintln!("run cancelled: {}", v["data"]["reason"].as_str().unwrap_or(""));
            }
            "run" => {
                self.end_line();
                eprintln!(
                    "[{} {} · {} steps · {} in / {} out tokens]",
                    v["id"].as_str().unwrap_or("?"),
                    v["status"].as_str().unwrap_or("?"),
                    v["steps"],
                    v["usage"]["input_tokens"],
                    v["usage"]["output_tokens"]
                );
            }
            _ => {}
        }
    }

    /// One line per event of a session stream.
    pub fn event_line(&mut self, f: &SseFrame) {
        if f.event == "delta" {
            return;
        }
        match serde_json::from_str::<Value>(&f.data) {
            Ok(v) => self.stored_event_line(&v),
            Err(_) => println!("{}", f.data),
        }
    }

    pub fn stored_event_line(&mut self, e: &Value) {
        if self.json {
            println!("{e}");
            return;
        }
        let run = e["run_id"].as_str().map(|r| format!(" {r}")).unwrap_or_default();
        println!(
            "{:>6} {} {:<22}{} {}",
            e["seq"].as_u64().unwrap_or(0),
            e["at"].as_str().unwrap_or(""),
            e["type"].as_str().unwrap_or("?"),
            run,
            one_line(&e["data"].to_string())
        );
    }
}

fn one_line(s: &str) -> String {
    let flat: String = s.chars().map(|c| if c == '\n' { ' ' } else { c }).collect();
    if flat.chars().count() > 160 { format!("{}…", flat.chars().take(160).collect::<String>()) } else { flat }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parser_handles_split_chunks_comments_and_multiline_data() {
        let text =
            b": keep-alive\n\nid: 3\nevent: run_created\ndata: {\"a\":1}\n\nevent: delta\ndata: line1\ndata: line2\n\n";
        for split in 0..text.len() {
            let mut p = SseParser::default();
            let mut frames = p.push(&text[..split]);
            frames.extend(p.push(&text[split..]));
            assert_eq!(frames.len(), 2, "split at {split}");
            assert_eq!(frames[0].id.as_deref(), Some("3"));
            assert_eq!(frames[0].event, "run_created");
            assert_eq!(frames[1].data, "line1\nline2");
        }
    }
}
