//! The aws CLI shorthand syntax (`Key=a,Values=x,y,Ebs={VolumeSize=8},Tags=[{Key=k,Value=v}]`), parsed into JSON.
//!
//! Grammar, as in the aws CLI:
//!
//! ```text
//! structure = keyval *("," keyval)
//! keyval    = key "=" value
//! value     = "{" structure "}" | "[" [item *("," item)] "]" | scalar *("," scalar)
//! item      = "{" structure "}" | "[" ... "]" | scalar
//! scalar    = 'single quoted' | "double quoted" | bare text (a backslash escapes the next character)
//! ```
//!
//! After a comma, text that reads `key=` starts the next key; anything else is one more value of the
//! current key, so `Name=n,Values=a,b` gives `Values` the list `["a", "b"]`. Every scalar is a string:
//! the caller converts (`VolumeSize=8`) by the field's type.

use serde_json::{Map, Value};

/// Parses one shorthand structure (`Key=a,Value=b`) into a JSON object.
pub fn parse(input: &str) -> Result<Map<String, Value>, String> {
    let mut parser = Parser {
        chars: input.chars().collect(),
        pos: 0,
    };
    let map = parser.structure(None)?;
    parser.skip_ws();
    match parser.peek() {
        None => Ok(map),
        Some(c) => Err(parser.error(&format!("unexpected '{c}'"))),
    }
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '#' | '/' | ':')
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    fn error(&self, what: &str) -> String {
        let input: String = self.chars.iter().collect();
        format!("{what} at position {} in \"{input}\"", self.pos)
    }

    fn expect(&mut self, want: char) -> Result<(), String> {
        self.skip_ws();
        match self.peek() {
            Some(c) if c == want => {
                self.pos += 1;
                Ok(())
            }
            Some(c) => Err(self.error(&format!("expected '{want}', found '{c}'"))),
            None => Err(self.error(&format!("expected '{want}', found the end"))),
        }
    }

    /// `key=value,key=value` up to `close` (or the end of the input).
    fn structure(&mut self, close: Option<char>) -> Result<Map<String, Value>, String> {
        let mut map = Map::new();
        self.skip_ws();
        if close.is_some() && self.peek() == close {
            return Ok(map);
        }
        loop {
            self.skip_ws();
            let start = self.pos;
            while self.peek().is_some_and(is_key_char) {
                self.pos += 1;
            }
            if self.pos == start {
                return Err(match self.peek() {
                    Some(c) => self.error(&format!("expected a key, found '{c}'")),
                    None => self.error("expected a key, found the end"),
                });
            }
            let key: String = self.chars[start..self.pos].iter().collect();
            self.expect('=')?;
            let value = self.value(close)?;
            if map.insert(key.clone(), value).is_some() {
                return Err(self.error(&format!("key {key} given twice")));
            }
            self.skip_ws();
            if self.peek() == Some(',') {
                self.pos += 1;
            } else {
                return Ok(map);
            }
        }
    }

    /// Whether the text at `pos` reads `key=` (the next key of the structure rather than a value).
    fn key_follows(&self, mut pos: usize) -> bool {
        let at = |p: usize| self.chars.get(p).copied();
        while at(pos).is_some_and(char::is_whitespace) {
            pos += 1;
        }
        let start = pos;
        while at(pos).is_some_and(is_key_char) {
            pos += 1;
        }
        if pos == start {
            return false;
        }
        while at(pos).is_some_and(char::is_whitespace) {
            pos += 1;
        }
        at(pos) == Some('=')
    }

    fn value(&mut self, close: Option<char>) -> Result<Value, String> {
        self.skip_ws();
        match self.peek() {
            Some('[') => self.list(),
            Some('{') => self.hash(),
            _ => {
                let mut items = vec![self.scalar(close)?];
                while self.peek() == Some(',') && !self.key_follows(self.pos + 1) {
                    self.pos += 1;
                    items.push(self.scalar(close)?);
                }
                if items.len() == 1 {
                    Ok(items.pop().unwrap_or(Value::Null))
                } else {
                    Ok(Value::Array(items))
                }
            }
        }
    }

    fn hash(&mut self) -> Result<Value, String> {
        self.expect('{')?;
        let map = self.structure(Some('}'))?;
        self.expect('}')?;
        Ok(Value::Object(map))
    }

    fn list(&mut self) -> Result<Value, String> {
        self.expect('[')?;
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek() == Some(']') {
            self.pos += 1;
            return Ok(Value::Array(items));
        }
        loop {
            self.skip_ws();
            let item = match self.peek() {
                Some('[') => self.list()?,
                Some('{') => self.hash()?,
                _ => self.scalar(Some(']'))?,
            };
            items.push(item);
            self.skip_ws();
            match self.peek() {
                Some(',') => self.pos += 1,
                Some(']') => {
                    self.pos += 1;
                    return Ok(Value::Array(items));
                }
                Some(c) => return Err(self.error(&format!("expected ',' or ']', found '{c}'"))),
                None => return Err(self.error("expected ']', found the end")),
            }
        }
    }

    /// One string value: quoted, or bare up to `,` or `close`.
    fn scalar(&mut self, close: Option<char>) -> Result<Value, String> {
        self.skip_ws();
        if let Some(quote @ ('\'' | '"')) = self.peek() {
            self.pos += 1;
            let mut text = String::new();
            loop {
                match self.peek() {
                    None => return Err(self.error(&format!("missing closing {quote}"))),
                    Some('\\') if self.chars.get(self.pos + 1) == Some(&quote) => {
                        text.push(quote);
                        self.pos += 2;
                    }
                    Some(c) if c == quote => {
                        self.pos += 1;
                        break;
                    }
                    Some(c) => {
                        text.push(c);
                        self.pos += 1;
                    }
                }
            }
            self.skip_ws();
            return Ok(Value::String(text));
        }
        let mut text = String::new();
        while let Some(c) = self.peek() {
            if c == ',' || Some(c) == close {
                break;
            }
            if c == '\\' {
                if let Some(&next) = self.chars.get(self.pos + 1) {
                    text.push(next);
                    self.pos += 2;
                    continue;
                }
            }
            text.push(c);
            self.pos += 1;
        }
        Ok(Value::String(text.trim_end().to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parsed(input: &str) -> Value {
        Value::Object(parse(input).unwrap())
    }

    #[test]
    fn key_value_pairs() {
        assert_eq!(parsed("Key=Name,Value=web"), json!({"Key": "Name", "Value": "web"}));
    }

    #[test]
    fn values_after_a_comma_extend_a_list_until_the_next_key() {
        assert_eq!(
            parsed("Name=instance-state-name,Values=running,stopped"),
            json!({"Name": "instance-state-name", "Values": ["running", "stopped"]})
        );
        assert_eq!(
            parsed("Values=a,b,Name=tag:Name"),
            json!({"Values": ["a", "b"], "Name": "tag:Name"})
        );
    }

    #[test]
    fn nested_hashes_and_lists() {
        assert_eq!(
            parsed("DeviceName=/dev/xvda,Ebs={VolumeSize=8,DeleteOnTermination=false}"),
            json!({"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": "8", "DeleteOnTermination": "false"}})
        );
        assert_eq!(
            parsed("ResourceType=instance,Tags=[{Key=Name,Value=web},{Key=env,Value=prod}]"),
            json!({"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": "web"}, {"Key": "env", "Value": "prod"}]})
        );
        assert_eq!(
            parsed("Values=[a, b],Empty=[]"),
            json!({"Values": ["a", "b"], "Empty": []})
        );
    }

    #[test]
    fn quotes_escapes_and_empty_values() {
        assert_eq!(
            parsed(r#"Key=Name,Value='a, b=c'"#),
            json!({"Key": "Name", "Value": "a, b=c"})
        );
        assert_eq!(parsed(r#"Value="say \"hi\"""#), json!({"Value": "say \"hi\""}));
        assert_eq!(parsed(r"Value=a\,b"), json!({"Value": "a,b"}));
        assert_eq!(parsed("Key=k,Value="), json!({"Key": "k", "Value": ""}));
        assert_eq!(parsed("Value=x=y"), json!({"Value": "x=y"}));
    }

    #[test]
    fn malformed_input_is_refused() {
        assert!(parse("Key").unwrap_err().contains("expected '='"));
        assert!(parse("=v").unwrap_err().contains("expected a key"));
        assert!(parse("Ebs={VolumeSize=8").unwrap_err().contains("expected '}'"));
        assert!(parse("Tags=[{Key=a}").unwrap_err().contains("expected ']'"));
        assert!(parse("Key=a,Key=b").unwrap_err().contains("given twice"));
        assert!(parse("Value='open").unwrap_err().contains("missing closing"));
    }
}
