//! The YAML the deployment manifests are written in, read into `serde_json::Value`s, without a
//! YAML crate: block mappings and sequences, flow mappings and sequences (over several lines,
//! which is how JSON is embedded), plain, single- and double-quoted scalars, `|` / `|-` block
//! scalars, comments and `---` documents. Anything else (anchors, aliases, tags, `>` folding,
//! multi-line plain scalars, tabs for indentation, complex keys) is an error, never a guess.
//! Plain scalars follow the JSON schema: `null`/`~`, `true`/`false`, integers, decimals with a
//! dot; everything else is a string.

use serde_json::{Map, Number, Value};

/// Every non-empty document of `text`.
pub fn documents(text: &str) -> Result<Vec<Value>, String> {
    let mut docs = Vec::new();
    let mut lines: Vec<String> = Vec::new();
    let mut first = 1;
    let mut flush = |lines: &mut Vec<String>, first: usize| -> Result<(), String> {
        let mut p = Parser {
            lines: std::mem::take(lines),
            i: 0,
            first,
        };
        if let Some(v) = p.document()? {
            docs.push(v);
        }
        Ok(())
    };
    for (n, line) in text.lines().enumerate() {
        if line.trim_end() == "---" {
            flush(&mut lines, first)?;
            first = n + 2;
        } else {
            lines.push(line.to_string());
        }
    }
    flush(&mut lines, first)?;
    Ok(docs)
}

struct Parser {
    lines: Vec<String>,
    i: usize,
    /// Line number (1-based) of `lines[0]` in the file, for errors.
    first: usize,
}

/// A line without its comment: `#` at the start or after a space, outside quotes.
fn strip_comment(line: &str) -> &str {
    let mut quote: Option<char> = None;
    let mut prev = ' ';
    let mut escaped = false;
    for (at, c) in line.char_indices() {
        match quote {
            Some('"') if escaped => escaped = false,
            Some('"') if c == '\\' => escaped = true,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if (c == '"' || c == '\'') && " \t[{,:-".contains(prev) => quote = Some(c),
            None if c == '#' && (prev == ' ' || at == 0) => return line[..at].trim_end(),
            None => {}
        }
        prev = c;
    }
    line.trim_end()
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

fn is_seq_item(content: &str) -> bool {
    content == "-" || content.starts_with("- ")
}

impl Parser {
    fn err(&self, msg: impl std::fmt::Display) -> String {
        format!("line {}: {msg}", self.first + self.i)
    }

    /// Moves to the next line with content; returns its indentation and content.
    fn peek(&mut self) -> Result<Option<(usize, String)>, String> {
        while self.i < self.lines.len() {
            let line = &self.lines[self.i];
            let lead = &line[..line.len() - line.trim_start().len()];
            let content = strip_comment(line);
            if content.trim().is_empty() {
                self.i += 1;
                continue;
            }
            if lead.contains('\t') {
                return Err(self.err("a tab in the indentation"));
            }
            let n = indent_of(line);
            return Ok(Some((n, content[n..].to_string())));
        }
        Ok(None)
    }

    fn document(&mut self) -> Result<Option<Value>, String> {
        if self.peek()?.is_none() {
            return Ok(None);
        }
        let v = self.block()?;
        if self.peek()?.is_some() {
            return Err(self.err("unexpected content after the document's top node"));
        }
        Ok(Some(v))
    }

    /// The node starting at the next line with content.
    fn block(&mut self) -> Result<Value, String> {
        let Some((n, content)) = self.peek()? else {
            return Ok(Value::Null);
        };
        if is_seq_item(&content) {
            self.sequence(n)
        } else if split_key(&content).map_err(|e| self.err(e))?.is_some() {
            self.mapping(n)
        } else {
            self.i += 1;
            self.inline(&content)
        }
    }

    fn mapping(&mut self, n: usize) -> Result<Value, String> {
        let mut map = Map::new();
        while let Some((m, content)) = self.peek()? {
            if m < n {
                break;
            }
            if m > n {
                return Err(self.err("unexpected indentation"));
            }
            if is_seq_item(&content) {
                return Err(self.err("a sequence item where a key was expected"));
            }
            let Some((key, rest)) = split_key(&content).map_err(|e| self.err(e))? else {
                return Err(self.err(format!("expected `key: value`, found {content:?}")));
            };
            self.i += 1;
            let value = self.value(&rest, n)?;
            if map.insert(key.clone(), value).is_some() {
                return Err(self.err(format!("duplicate key {key:?}")));
            }
        }
        Ok(Value::Object(map))
    }

    fn sequence(&mut self, n: usize) -> Result<Value, String> {
        let mut items = Vec::new();
        while let Some((m, content)) = self.peek()? {
            if m < n || (m == n && !is_seq_item(&content)) {
                break;
            }
            if m > n {
                return Err(self.err("unexpected indentation"));
            }
            if content == "-" {
                self.i += 1;
                items.push(self.value("", n)?);
            } else {
                // `- rest` is `rest` indented two more: a compact nested mapping or sequence.
                let line = format!("{}{}", " ".repeat(n + 2), &content[2..]);
                self.lines[self.i] = line;
                items.push(self.block()?);
            }
        }
        Ok(Value::Array(items))
    }

    /// The value after `key:` (or a lone `-`) on a line of indentation `n`.
    fn value(&mut self, rest: &str, n: usize) -> Result<Value, String> {
        if rest.is_empty() {
            return match self.peek()? {
                Some((m, _)) if m > n => self.block(),
                // YAML lets a mapping's sequence value start at the key's own indentation.
                Some((m, c)) if m == n && is_seq_item(&c) => self.sequence(n),
                _ => Ok(Value::Null),
            };
        }
        match rest {
            "|" | "|-" => return Ok(Value::String(self.literal(n, rest == "|"))),
            _ => {}
        }
        if rest.starts_with(['|', '>', '&', '*', '!', '%', '@', '`']) {
            return Err(self.err(format!("unsupported YAML: {rest:?}")));
        }
        self.inline(rest)
    }

    /// A `|` block scalar: the following lines indented more than `n`, kept as they are.
    fn literal(&mut self, n: usize, keep_final_newline: bool) -> String {
        let mut body: Vec<&str> = Vec::new();
        let mut block_indent = None;
        while self.i < self.lines.len() {
            let line = &self.lines[self.i];
            if line.trim().is_empty() {
                body.push("");
            } else {
                let m = indent_of(line);
                if m <= n {
                    break;
                }
                let b = *block_indent.get_or_insert(m);
                if m < b {
                    break;
                }
                body.push(&line[b..]);
            }
            self.i += 1;
        }
        while body.last() == Some(&"") {
            body.pop();
        }
        let mut text = body.join("\n");
        if keep_final_newline && !text.is_empty() {
            text.push('\n');
        }
        text
    }

    /// A scalar, or a flow collection that may go on over the following lines.
    fn inline(&mut self, first: &str) -> Result<Value, String> {
        if !first.starts_with(['{', '[']) {
            if first.starts_with(['&', '*', '!', '|', '>']) {
                return Err(self.err(format!("unsupported YAML: {first:?}")));
            }
            return scalar(first).map_err(|e| self.err(e));
        }
        let start = self.i;
        let mut text = first.to_string();
        while !balanced(&text) {
            if self.i >= self.lines.len() {
                self.i = start;
                return Err(self.err("unclosed flow collection"));
            }
            text.push('\n');
            text.push_str(strip_comment(&self.lines[self.i]));
            self.i += 1;
        }
        let mut f = Flow {
            s: text.chars().collect(),
            p: 0,
        };
        let v = f.value().map_err(|e| self.err(e))?;
        f.ws();
        if f.p != f.s.len() {
            return Err(self.err("content after a flow collection"));
        }
        Ok(v)
    }
}

/// Whether every bracket opened outside quotes is closed.
fn balanced(text: &str) -> bool {
    let mut depth = 0i32;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in text.chars() {
        match quote {
            Some('"') if escaped => escaped = false,
            Some('"') if c == '\\' => escaped = true,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => match c {
                '"' | '\'' => quote = Some(c),
                '{' | '[' => depth += 1,
                '}' | ']' => depth -= 1,
                _ => {}
            },
        }
    }
    depth <= 0 && quote.is_none()
}

/// `key: rest` of a block mapping line (key plain or quoted); `None` when the line is no key.
fn split_key(content: &str) -> Result<Option<(String, String)>, String> {
    let (key, after) = if content.starts_with(['"', '\'']) {
        let mut f = Flow {
            s: content.chars().collect(),
            p: 0,
        };
        let key = f.quoted()?;
        let after: String = f.s[f.p..].iter().collect();
        (key, after.trim_start().to_string())
    } else if content.starts_with(['{', '[', '-', '?', '&', '*', '!']) {
        return Ok(None);
    } else {
        match content
            .find(": ")
            .or_else(|| content.ends_with(':').then(|| content.len() - 1))
        {
            Some(at) => (
                content[..at].trim_end().to_string(),
                content[at..].to_string(),
            ),
            None => return Ok(None),
        }
    };
    match after.strip_prefix(':') {
        Some(rest) if rest.is_empty() || rest.starts_with(' ') => {
            Ok(Some((key, rest.trim().to_string())))
        }
        _ => Ok(None),
    }
}

fn scalar(text: &str) -> Result<Value, String> {
    let t = text.trim();
    if t.starts_with(['"', '\'']) {
        let mut f = Flow {
            s: t.chars().collect(),
            p: 0,
        };
        let s = f.quoted()?;
        if f.p != f.s.len() {
            return Err(format!("content after a quoted scalar: {t:?}"));
        }
        return Ok(Value::String(s));
    }
    Ok(plain(t))
}

fn plain(t: &str) -> Value {
    match t {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    let digits = t.strip_prefix(['-', '+']).unwrap_or(t);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(i) = t.parse::<i64>() {
            return Value::Number(i.into());
        }
    }
    let mut parts = digits.splitn(2, '.');
    let (int, frac) = (parts.next().unwrap_or(""), parts.next());
    if let Some(frac) = frac {
        let ok = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if ok(int) && ok(frac) && !(int.is_empty() && frac.is_empty()) {
            if let Some(n) = t.parse::<f64>().ok().and_then(Number::from_f64) {
                return Value::Number(n);
            }
        }
    }
    Value::String(t.to_string())
}

struct Flow {
    s: Vec<char>,
    p: usize,
}

impl Flow {
    fn ws(&mut self) {
        while self.p < self.s.len() && self.s[self.p].is_whitespace() {
            self.p += 1;
        }
    }

    fn peek(&self) -> Option<char> {
        self.s.get(self.p).copied()
    }

    fn value(&mut self) -> Result<Value, String> {
        self.ws();
        match self.peek() {
            Some('{') => self.mapping(),
            Some('[') => self.sequence(),
            Some('"' | '\'') => Ok(Value::String(self.quoted()?)),
            Some('&' | '*' | '!' | '|' | '>') => {
                Err("unsupported YAML in a flow collection".into())
            }
            _ => Ok(plain(&self.plain_text(false))),
        }
    }

    /// A plain scalar in a flow collection: up to `,`, `]`, `}` (and `: ` for a key).
    fn plain_text(&mut self, key: bool) -> String {
        let start = self.p;
        while let Some(c) = self.peek() {
            if matches!(c, ',' | ']' | '}' | '\n')
                || (key
                    && c == ':'
                    && self
                        .s
                        .get(self.p + 1)
                        .is_none_or(|n| n.is_whitespace() || ",]}".contains(*n)))
            {
                break;
            }
            self.p += 1;
        }
        self.s[start..self.p]
            .iter()
            .collect::<String>()
            .trim()
            .to_string()
    }

    fn quoted(&mut self) -> Result<String, String> {
        let q = self.peek().ok_or("expected a quoted string")?;
        let start = self.p;
        self.p += 1;
        let mut out = String::new();
        loop {
            let c = self.peek().ok_or("unclosed quoted string")?;
            self.p += 1;
            match c {
                '\n' => return Err("a quoted string over several lines".into()),
                '\'' if q == '\'' => {
                    if self.peek() == Some('\'') {
                        self.p += 1;
                        out.push('\'');
                    } else {
                        return Ok(out);
                    }
                }
                '"' if q == '"' => {
                    // YAML's double-quoted escapes used here are JSON's.
                    let raw: String = self.s[start..self.p].iter().collect();
                    return serde_json::from_str(&raw)
                        .map_err(|e| format!("bad double-quoted string {raw}: {e}"));
                }
                '\\' if q == '"' => {
                    if self.peek().is_some() {
                        self.p += 1;
                    }
                }
                _ => out.push(c),
            }
        }
    }

    fn mapping(&mut self) -> Result<Value, String> {
        self.p += 1;
        let mut map = Map::new();
        loop {
            self.ws();
            match self.peek() {
                Some('}') => {
                    self.p += 1;
                    return Ok(Value::Object(map));
                }
                None => return Err("unclosed {".into()),
                _ => {}
            }
            let quoted_key = matches!(self.peek(), Some('"' | '\''));
            let key = if quoted_key {
                self.quoted()?
            } else {
                self.plain_text(true)
            };
            self.ws();
            if self.peek() != Some(':') {
                return Err(format!("expected `:` after the key {key:?}"));
            }
            self.p += 1;
            // After a quoted (JSON-like) key the value may follow the colon directly.
            let value = match self.peek() {
                Some(',' | '}') => Value::Null,
                Some(c) if quoted_key || c.is_whitespace() => self.value()?,
                _ => return Err(format!("expected a space after `{key}:`")),
            };
            if map.insert(key.clone(), value).is_some() {
                return Err(format!("duplicate key {key:?}"));
            }
            self.ws();
            match self.peek() {
                Some(',') => self.p += 1,
                Some('}') => {}
                _ => return Err(format!("expected `,` or `}}` after the value of {key:?}")),
            }
        }
    }

    fn sequence(&mut self) -> Result<Value, String> {
        self.p += 1;
        let mut items = Vec::new();
        loop {
            self.ws();
            match self.peek() {
                Some(']') => {
                    self.p += 1;
                    return Ok(Value::Array(items));
                }
                None => return Err("unclosed [".into()),
                _ => {}
            }
            items.push(self.value()?);
            self.ws();
            match self.peek() {
                Some(',') => self.p += 1,
                Some(']') => {}
                _ => return Err("expected `,` or `]` in a flow sequence".into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::documents;
    use serde_json::json;

    #[test]
    fn the_subset() {
        let text = "# c\na: 1\nb: \"x # not a comment\"  # comment\nc:\n  - d: e\n    f: [1, 'g''h', {i: j}]\n  - - k\n  -\n    l: m\nn:\n- o\np: |\n  line 1\n    line 2\n\nq: {\"r\": \"s\",\n    \"t\": [true, null, 1.5]\n  }\nu: http://x/y:z\nv: 0.0.0.0\n---\nw: ~\n";
        let docs = documents(text).unwrap();
        assert_eq!(
            docs,
            [
                json!({"a": 1, "b": "x # not a comment",
                       "c": [{"d": "e", "f": [1, "g'h", {"i": "j"}]}, ["k"], {"l": "m"}],
                       "n": ["o"], "p": "line 1\n  line 2\n",
                       "q": {"r": "s", "t": [true, null, 1.5]}, "u": "http://x/y:z", "v": "0.0.0.0"}),
                json!({"w": null})
            ]
        );
        for bad in [
            "a: &x 1\n",
            "a: b\n  c: d\n",
            "a: 1\na: 2\n",
            "a: {b: 1\n",
            "a: >\n  x\n",
            "\ta: 1\n",
        ] {
            assert!(documents(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
