//! EC2 filters (`Name` + `Values` with `*`/`?` wildcards; values OR-ed, filters AND-ed)
//! and NextToken pagination.

use crate::error::{Ec2Error, Ec2Result};
use crate::model::Tags;

/// One filter of a Describe call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// e.g. `instance-state-name`, `tag:Name`, `tag-key`.
    pub name: String,
    /// Accepted values; `*` matches any run of characters, `?` one, `\` escapes.
    pub values: Vec<String>,
}

impl Filter {
    /// A filter from a name and values.
    pub fn new(name: &str, values: &[&str]) -> Filter {
        Filter {
            name: name.to_string(),
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }
}

/// Whether `text` matches the EC2 wildcard `pattern`.
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    if !pattern.contains(['*', '?', '\\']) {
        return pattern == text;
    }
    #[derive(Clone, Copy, PartialEq)]
    enum Token {
        Literal(char),
        AnyOne,
        AnyRun,
    }
    let mut tokens = Vec::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        tokens.push(match c {
            '\\' => Token::Literal(chars.next().unwrap_or('\\')),
            '*' => Token::AnyRun,
            '?' => Token::AnyOne,
            other => Token::Literal(other),
        });
    }
    let text: Vec<char> = text.chars().collect();
    // Greedy matching with one backtrack point (the last `*`), linear in practice.
    let (mut t, mut p) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match tokens.get(p) {
            Some(Token::AnyRun) => {
                star = Some((p, t));
                p += 1;
            }
            Some(Token::AnyOne) => {
                p += 1;
                t += 1;
            }
            Some(Token::Literal(c)) if *c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((star_p, star_t)) => {
                    p = star_p + 1;
                    t = star_t + 1;
                    star = Some((star_p, star_t + 1));
                }
                None => return false,
            },
        }
    }
    tokens[p..].iter().all(|token| *token == Token::AnyRun)
}

/// The values a resource has for a filter name (`None`: the filter is not valid here).
pub enum Values {
    /// One value.
    One(String),
    /// Several (any may match).
    Many(Vec<String>),
}

/// Checks the filter names against those a Describe call supports (besides tag filters).
pub fn check_names(filters: &[Filter], supported: &[&str]) -> Ec2Result<()> {
    for filter in filters {
        let is_tag = filter.name.starts_with("tag:") || filter.name == "tag-key" || filter.name == "tag-value";
        if !is_tag && !supported.contains(&filter.name.as_str()) {
            return Err(Ec2Error::InvalidParameterValue(format!(
                "The filter '{}' is invalid",
                filter.name
            )));
        }
    }
    Ok(())
}

/// Whether a resource passes every filter; `lookup` gives its value(s) for a filter name,
/// `tags` its tags.
pub fn matches(filters: &[Filter], tags: &Tags, mut lookup: impl FnMut(&str) -> Option<Values>) -> bool {
    filters.iter().all(|filter| {
        let any = |candidate: &str| filter.values.iter().any(|pattern| wildcard_match(pattern, candidate));
        if let Some(key) = filter.name.strip_prefix("tag:") {
            return tags.get(key).is_some_and(|value| any(value));
        }
        match filter.name.as_str() {
            "tag-key" => tags.keys().any(|key| any(key)),
            "tag-value" => tags.values().any(|value| any(value)),
            name => match lookup(name) {
                Some(Values::One(value)) => any(&value),
                Some(Values::Many(values)) => values.iter().any(|value| any(value)),
                None => false,
            },
        }
    })
}

/// A page of `items` (already in their stable order) after `next_token`, at most `max_results`
/// long (0 = all), with the token for the next page; `key` gives an item's position key.
pub fn paginate<T>(
    items: Vec<T>,
    max_results: i32,
    next_token: &str,
    key: impl Fn(&T) -> String,
) -> Ec2Result<(Vec<T>, String)> {
    if max_results != 0 && !(5..=1000).contains(&max_results) {
        return Err(Ec2Error::InvalidParameterValue(format!(
            "MaxResults must be between 5 and 1000, not {max_results}"
        )));
    }
    let mut items = items;
    if !next_token.is_empty() {
        let after = decode_token(next_token)?;
        let start = items.iter().position(|item| key(item) > after).unwrap_or(items.len());
        items.drain(..start);
    }
    if max_results == 0 || items.len() <= max_results as usize {
        return Ok((items, String::new()));
    }
    items.truncate(max_results as usize);
    let token = items.last().map(|item| encode_token(&key(item))).unwrap_or_default();
    Ok((items, token))
}

fn encode_token(key: &str) -> String {
    key.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_token(token: &str) -> Ec2Result<String> {
    let invalid = || Ec2Error::InvalidParameterValue(format!("Invalid NextToken: {token}"));
    if token.len() % 2 != 0 {
        return Err(invalid());
    }
    let bytes: Result<Vec<u8>, _> = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2).unwrap_or("zz"), 16))
        .collect();
    String::from_utf8(bytes.map_err(|_| invalid())?).map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(wildcard_match("web-*", "web-1"));
        assert!(wildcard_match("web-*", "web-"));
        assert!(!wildcard_match("web-*", "db-1"));
        assert!(wildcard_match("w?b", "web"));
        assert!(!wildcard_match("w?b", "wb"));
        assert!(wildcard_match("*a*b*", "xxaxxbxx"));
        assert!(!wildcard_match("*a*b", "xxaxxbxxc"));
        assert!(wildcard_match("a\\*", "a*"));
        assert!(!wildcard_match("a\\*", "ab"));
        assert!(wildcard_match("*", ""));
        assert!(wildcard_match("exact", "exact"));
        assert!(!wildcard_match("exact", "exactly"));
    }

    #[test]
    fn filters_or_values_and_filters() {
        let mut tags = Tags::new();
        tags.insert("Name".into(), "web-1".into());
        tags.insert("env".into(), "prod".into());
        let lookup = |name: &str| match name {
            "instance-state-name" => Some(Values::One("running".into())),
            _ => None,
        };
        let run = |filters: &[Filter]| matches(filters, &tags, lookup);
        assert!(run(&[Filter::new("instance-state-name", &["stopped", "running"])]));
        assert!(!run(&[Filter::new("instance-state-name", &["stopped"])]));
        assert!(run(&[
            Filter::new("tag:Name", &["web-*"]),
            Filter::new("tag-key", &["env"])
        ]));
        assert!(!run(&[
            Filter::new("tag:Name", &["web-*"]),
            Filter::new("tag-value", &["dev"])
        ]));
        assert!(!run(&[Filter::new("tag:Missing", &["*"])]));
        assert!(run(&[Filter::new("tag-value", &["pr?d"])]));
    }

    #[test]
    fn unknown_filter_names_are_refused() {
        let error = check_names(&[Filter::new("bogus", &["x"])], &["instance-id"]).unwrap_err();
        assert_eq!(error.code(), "InvalidParameterValue");
        assert!(check_names(&[Filter::new("tag:Any", &["x"])], &[]).is_ok());
    }

    #[test]
    fn pagination_walks_every_item_once() {
        let items: Vec<String> = (0..23).map(|i| format!("{i:03}")).collect();
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let (page, next) = paginate(items.clone(), 5, &token, |s| s.clone()).unwrap();
            assert!(page.len() <= 5);
            seen.extend(page);
            if next.is_empty() {
                break;
            }
            token = next;
        }
        assert_eq!(seen, items);
        assert_eq!(
            paginate(items.clone(), 4, "", |s| s.clone()).unwrap_err().code(),
            "InvalidParameterValue"
        );
        assert_eq!(
            paginate(items, 5, "zz", |s| s.clone()).unwrap_err().code(),
            "InvalidParameterValue"
        );
    }
}
