//! A linear pre-scan of an agent spec's nesting depth, run before the YAML or JSON parser.
//! YAML parsers spend time quadratic in the nesting of flow collections; this refuses deep
//! documents in one pass over the bytes, naming the line where the limit is crossed.

use crate::Error;

/// Deepest nesting a spec may have (JSON Schemas of tool parameters included). Real specs stay
/// under 15.
pub const MAX_SPEC_DEPTH: usize = 64;

/// Refuses JSON nested deeper than [`MAX_SPEC_DEPTH`]. Brackets inside strings do not count.
pub fn check_json(text: &str) -> Result<(), Error> {
    let (mut depth, mut line, mut in_string, mut escaped) = (0usize, 1usize, false, false);
    for b in text.bytes() {
        match b {
            b'\n' => line += 1,
            _ if in_string => {
                (in_string, escaped) = match (escaped, b) {
                    (true, _) => (true, false),
                    (false, b'\\') => (true, true),
                    (false, b'"') => (false, false),
                    _ => (true, false),
                }
            }
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                too_deep(depth, line)?;
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Refuses YAML nested deeper than [`MAX_SPEC_DEPTH`]: block levels (distinct indentations, plus
/// compact `- - x` / `? ? x` indicators on one line) plus open flow collections. Quoted
/// scalars, comments and block scalars (`|`, `>`) are skipped; a `[` inside a plain scalar is
/// text, not a collection. Where it guesses, it guesses deeper than the parser would.
pub fn check_yaml(text: &str) -> Result<(), Error> {
    let mut scan = YamlScan::default();
    for (i, line) in text.trim_start_matches('\u{feff}').split('\n').enumerate() {
        scan.line(line.as_bytes(), i + 1)?;
    }
    Ok(())
}

fn too_deep(depth: usize, line: usize) -> Result<(), Error> {
    if depth > MAX_SPEC_DEPTH {
        return Err(Error::InvalidAgentSpec(format!("nested deeper than {MAX_SPEC_DEPTH} levels (line {line})")));
    }
    Ok(())
}

#[derive(Default)]
struct YamlScan {
    /// Indentations of the open block levels, increasing.
    indents: Vec<usize>,
    /// Open flow collections (`[`, `{`).
    flow: usize,
    /// Inside a quoted scalar that continues on the next line: its quote.
    quote: Option<u8>,
    block_scalar: Option<BlockScalar>,
}

/// A `|` or `>` scalar: lines indented deeper than its parent node are its text.
#[derive(Clone, Copy)]
struct BlockScalar {
    parent: usize,
    /// The indentation of its first line of text, once seen.
    text: Option<usize>,
}

/// Where one line's scan is.
struct Cursor {
    i: usize,
    /// At the start of a node, where `[`, `{`, quotes and `|` begin something.
    node_start: bool,
    /// Column of the last key, scalar or `-`/`?` indicator begun on this line.
    node_col: usize,
    compact: usize,
}

impl YamlScan {
    fn line(&mut self, line: &[u8], number: usize) -> Result<(), Error> {
        let indent = line.iter().take_while(|&&b| b == b' ').count();
        let blank = line[indent..].iter().all(u8::is_ascii_whitespace);
        if self.in_block_scalar(indent, blank) {
            return Ok(());
        }
        let mut at = Cursor { i: 0, node_start: true, node_col: indent, compact: 0 };
        if let Some(q) = self.quote {
            let Some(end) = skip_quoted(line, 0, q) else { return Ok(()) };
            self.quote = None;
            (at.i, at.node_start) = (end, false);
        } else if self.flow == 0 {
            if blank || line[indent] == b'#' {
                return Ok(());
            }
            while self.indents.last().is_some_and(|&top| top > indent) {
                self.indents.pop();
            }
            if self.indents.last() != Some(&indent) {
                self.indents.push(indent);
            }
            too_deep(self.indents.len(), number)?;
            at.i = indent;
            // A document marker may be followed by the document's root node.
            if indent == 0 && (line.starts_with(b"---") || line.starts_with(b"...")) && blank_at(line, 3) {
                at.i = 3;
            }
        }
        self.tokens(line, at, number)
    }

    /// Whether this line is text of an open block scalar (ending the scalar when it is not).
    fn in_block_scalar(&mut self, indent: usize, blank: bool) -> bool {
        let Some(b) = self.block_scalar else { return false };
        if blank {
            return true;
        }
        match b.text {
            Some(text) if indent >= text => return true,
            None if indent > b.parent => {
                self.block_scalar = Some(BlockScalar { text: Some(indent), ..b });
                return true;
            }
            _ => self.block_scalar = None,
        }
        false
    }

    /// Scans one line's tokens, counting compact indicators and flow brackets.
    fn tokens(&mut self, line: &[u8], mut at: Cursor, number: usize) -> Result<(), Error> {
        while at.i < line.len() {
            let (i, b) = (at.i, line[at.i]);
            at.i += 1;
            match b {
                b' ' | b'\t' | b'\r' => {}
                b'#' if i == 0 || line[i - 1].is_ascii_whitespace() => return Ok(()),
                b'-' | b'?' if at.node_start && self.flow == 0 && blank_at(line, i + 1) => {
                    at.compact += 1;
                    at.node_col = i;
                    too_deep(self.indents.len() + at.compact, number)?;
                }
                // In flow context `:` starts a value after a quoted key or a collection too.
                b':' if blank_at(line, i + 1) || (self.flow > 0 && i > 0 && b"\"']}".contains(&line[i - 1])) => {
                    at.node_start = true;
                }
                b',' if self.flow > 0 => at.node_start = true,
                b'[' | b'{' if at.node_start || self.flow > 0 => {
                    self.flow += 1;
                    too_deep(self.indents.len() + at.compact + self.flow, number)?;
                    at.node_start = true;
                }
                b']' | b'}' if self.flow > 0 => self.flow -= 1,
                b'"' | b'\'' if at.node_start => {
                    let Some(end) = skip_quoted(line, i + 1, b) else {
                        self.quote = Some(b);
                        return Ok(());
                    };
                    (at.i, at.node_start, at.node_col) = (end, false, i);
                }
                // Anchors and tags come before the node they name.
                b'&' | b'!' if at.node_start => {
                    while at.i < line.len() && !line[at.i].is_ascii_whitespace() {
                        at.i += 1;
                    }
                }
                b'|' | b'>' if at.node_start && self.flow == 0 => {
                    self.block_scalar = Some(BlockScalar { parent: at.node_col, text: None });
                    return Ok(());
                }
                _ => {
                    if at.node_start && self.flow == 0 {
                        at.node_col = i;
                    }
                    at.node_start = false;
                }
            }
        }
        Ok(())
    }
}

fn blank_at(line: &[u8], i: usize) -> bool {
    line.get(i).is_none_or(u8::is_ascii_whitespace)
}

/// The index just past the closing quote of a scalar opened before `from`, or `None` when it
/// continues on the next line. `''` escapes a single quote, `\` escapes in double quotes.
fn skip_quoted(line: &[u8], from: usize, quote: u8) -> Option<usize> {
    let mut i = from;
    while i < line.len() {
        match line[i] {
            b'\\' if quote == b'"' => i += 1,
            b'\'' if quote == b'\'' && line.get(i + 1) == Some(&b'\'') => i += 1,
            b if b == quote => return Some(i + 1),
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused_at(r: Result<(), Error>) -> String {
        match r {
            Err(Error::InvalidAgentSpec(m)) => m,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn deep_flow_sequences_are_refused_naming_the_line() {
        let yaml = format!("name: a\ntools: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(refused_at(check_yaml(&yaml)), "nested deeper than 64 levels (line 2)");
        let json = format!("{{\"name\": \"a\",\n\"x\": {}1{}}}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(refused_at(check_json(&json)), "nested deeper than 64 levels (line 2)");
    }

    #[test]
    fn deep_block_nesting_is_refused() {
        let compact = format!("name: a\nx:\n  {}y\n", "- ".repeat(100));
        assert!(refused_at(check_yaml(&compact)).contains("(line 3)"));
        let mut indented = String::from("a:\n");
        for level in 1..80 {
            indented.push_str(&format!("{}k{level}:\n", " ".repeat(level)));
        }
        assert!(refused_at(check_yaml(&indented)).contains("(line 65)"));
    }

    #[test]
    fn deep_nesting_cannot_hide_behind_markers_quotes_or_block_scalars() {
        let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
        for yaml in [
            format!("--- {deep}\n"),
            format!("\u{feff}{deep}\n"),
            format!("x: {{a:'{deep}'}}\n"),
            format!("- a: |\n    text\n  b: {deep}\n"),
            format!("a: \"multi\n  line\"\nb: {deep}\n"),
            format!("a: !!seq &x {deep}\n"),
        ] {
            refused_at(check_yaml(&yaml));
        }
    }

    #[test]
    fn brackets_in_text_do_not_count() {
        let many = "[".repeat(200);
        let yaml = format!(
            "name: a\ninstructions: |\n  {many}\n      {many}\ndescription: \"{many}\"\nnote: '{many}'\nplain: a{many}\n# {many}\nlast: [1, [2, {{k: \"]]]\"}}]]\n"
        );
        check_yaml(&yaml).unwrap();
        check_json(&format!("{{\"a\": \"{many}\\\"{many}\", \"b\": [[1]]}}")).unwrap();
    }

    #[test]
    fn ordinary_specs_pass() {
        let yaml = "name: a\nmodel: {provider: scripted, name: e}\ntools:\n  - name: t\n    type: client\n    parameters:\n      type: object\n      properties:\n        x: {type: array, items: {type: object, properties: {y: {type: string}}}}\n    description: >-\n      long\n        text\n";
        check_yaml(yaml).unwrap();
        let at_limit = format!("x: {}{}\n", "[".repeat(MAX_SPEC_DEPTH - 1), "]".repeat(MAX_SPEC_DEPTH - 1));
        check_yaml(&at_limit).unwrap();
    }
}
