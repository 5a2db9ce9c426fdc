//! Reads a TOML tree into typed settings while collecting every problem
//! with its key path, instead of stopping at the first as serde would.

use std::time::Duration;

use toml::{Table, Value};

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

#[derive(Debug, Default)]
pub struct Problems(pub Vec<Problem>);

impl Problems {
    pub fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    /// Whether a problem was already reported at `path`.
    pub fn mentions(&self, path: &str) -> bool {
        self.0.iter().any(|q| q.path == path)
    }
}

/// A value type that can be read from one TOML value.
pub trait FromToml: Sized {
    /// What the user should write, for error messages.
    const EXPECTED: &'static str;
    fn from_toml(v: &Value) -> Result<Self, String>;
}

fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => format!("the string {s:?}"),
        Value::Integer(i) => format!("the integer {i}"),
        Value::Float(f) => format!("the float {f}"),
        Value::Boolean(b) => format!("{b}"),
        Value::Datetime(d) => format!("the datetime {d}"),
        Value::Array(_) => "an array".into(),
        Value::Table(_) => "a table".into(),
    }
}

fn mismatch<T: FromToml>(v: &Value) -> String {
    format!("expected {}, got {}", T::EXPECTED, describe(v))
}

impl FromToml for String {
    const EXPECTED: &'static str = "a string";
    fn from_toml(v: &Value) -> Result<Self, String> {
        v.as_str()
            .map(str::to_owned)
            .ok_or_else(|| mismatch::<Self>(v))
    }
}

impl FromToml for bool {
    const EXPECTED: &'static str = "true or false";
    fn from_toml(v: &Value) -> Result<Self, String> {
        v.as_bool().ok_or_else(|| mismatch::<Self>(v))
    }
}

macro_rules! int_from_toml {
    ($($t:ty),*) => {$(
        impl FromToml for $t {
            const EXPECTED: &'static str = concat!("a whole number (", stringify!($t), ")");
            fn from_toml(v: &Value) -> Result<Self, String> {
                let i = v.as_integer().ok_or_else(|| mismatch::<Self>(v))?;
                <$t>::try_from(i).map_err(|_| format!("{i} is out of range for {}", stringify!($t)))
            }
        }
    )*};
}
int_from_toml!(u16, u32, u64, usize);

impl FromToml for Duration {
    const EXPECTED: &'static str = "a duration such as \"10s\", \"15m\" or \"1h\"";
    fn from_toml(v: &Value) -> Result<Self, String> {
        let s = v.as_str().ok_or_else(|| mismatch::<Self>(v))?;
        humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
    }
}

impl<T: FromToml> FromToml for Vec<T> {
    const EXPECTED: &'static str = "an array";
    fn from_toml(v: &Value) -> Result<Self, String> {
        let arr = v.as_array().ok_or_else(|| mismatch::<Self>(v))?;
        arr.iter()
            .enumerate()
            .map(|(i, item)| T::from_toml(item).map_err(|e| format!("[{i}]: {e}")))
            .collect()
    }
}

/// The keys of one table being read, with the path that leads to it.
pub struct Fields<'t> {
    path: String,
    table: Option<&'t Table>,
    seen: Vec<String>,
}

impl<'t> Fields<'t> {
    pub fn root(table: &'t Table) -> Fields<'t> {
        Fields {
            path: String::new(),
            table: Some(table),
            seen: vec![],
        }
    }

    pub fn path_of(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn raw(&mut self, key: &str) -> Option<&'t Value> {
        self.seen.push(key.to_owned());
        self.table.and_then(|t| t.get(key))
    }

    /// Marks a key as known without reading it (read elsewhere).
    pub fn known(&mut self, key: &str) -> Option<&'t Value> {
        self.raw(key)
    }

    pub fn opt<T: FromToml>(&mut self, p: &mut Problems, key: &str) -> Option<T> {
        let v = self.raw(key)?;
        match T::from_toml(v) {
            Ok(t) => Some(t),
            Err(e) => {
                let path = self.path_of(key);
                // Array element errors start with "[i]" and attach to the path.
                match e.strip_prefix('[') {
                    Some(rest) => {
                        let (idx, msg) = rest.split_once("]: ").unwrap_or((rest, ""));
                        p.add(format!("{path}[{idx}]"), msg.to_owned());
                    }
                    None => p.add(path, e),
                }
                None
            }
        }
    }

    pub fn get<T: FromToml>(&mut self, p: &mut Problems, key: &str, default: T) -> T {
        self.opt(p, key).unwrap_or(default)
    }

    /// Reads a key with a custom parser that returns a message on failure.
    pub fn parsed<T, R: FromToml>(
        &mut self,
        p: &mut Problems,
        key: &str,
        parse: impl FnOnce(R) -> Result<T, String>,
    ) -> Option<T> {
        let raw: R = self.opt(p, key)?;
        parse(raw).map_err(|e| p.add(self.path_of(key), e)).ok()
    }

    /// A sub-table (absent is fine: every key then takes its default).
    pub fn table(&mut self, p: &mut Problems, key: &str) -> Fields<'t> {
        let path = self.path_of(key);
        let table = match self.raw(key) {
            None => None,
            Some(Value::Table(t)) => Some(t),
            Some(other) => {
                p.add(
                    path.clone(),
                    format!("expected a table, got {}", describe(other)),
                );
                None
            }
        };
        Fields {
            path,
            table,
            seen: vec![],
        }
    }

    /// An array of tables (`[[accounts]]`).
    pub fn tables(&mut self, p: &mut Problems, key: &str) -> Vec<Fields<'t>> {
        let path = self.path_of(key);
        match self.raw(key) {
            None => vec![],
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| match item {
                    Value::Table(t) => Some(Fields {
                        path: format!("{path}[{i}]"),
                        table: Some(t),
                        seen: vec![],
                    }),
                    other => {
                        p.add(
                            format!("{path}[{i}]"),
                            format!("expected a table, got {}", describe(other)),
                        );
                        None
                    }
                })
                .collect(),
            Some(other) => {
                p.add(
                    path,
                    format!("expected an array of tables, got {}", describe(other)),
                );
                vec![]
            }
        }
    }

    /// The names of the keys present (for maps keyed by name).
    pub fn present_keys(&self) -> Vec<String> {
        self.table
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Reports every key that no reader asked for.
    pub fn finish(self, p: &mut Problems) {
        let Some(table) = self.table else { return };
        for key in table.keys() {
            if !self.seen.iter().any(|s| s == key) {
                let hint = closest(key, &self.seen)
                    .map(|k| format!(" (did you mean {k:?}?)"))
                    .unwrap_or_default();
                p.add(self.path_of(key), format!("unknown key{hint}"));
            }
        }
    }
}

fn closest<'a>(key: &str, known: &'a [String]) -> Option<&'a String> {
    known
        .iter()
        .map(|k| (edit_distance(key, k), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_reported_with_a_suggestion() {
        let table: Table = toml::from_str("timout = \"5s\"\nurls = []").unwrap();
        let mut p = Problems::default();
        let mut f = Fields::root(&table);
        let _: Duration = f.get(&mut p, "timeout", Duration::from_secs(1));
        let _: Vec<String> = f.get(&mut p, "urls", vec![]);
        f.finish(&mut p);
        assert_eq!(
            p.0,
            vec![Problem {
                path: "timout".into(),
                message: "unknown key (did you mean \"timeout\"?)".into()
            }]
        );
    }

    #[test]
    fn array_element_errors_name_the_index() {
        let table: Table = toml::from_str("urls = [\"a\", 3]").unwrap();
        let mut p = Problems::default();
        let mut f = Fields::root(&table);
        assert_eq!(f.opt::<Vec<String>>(&mut p, "urls"), None);
        assert_eq!(p.0[0].path, "urls[1]");
        assert_eq!(p.0[0].message, "expected a string, got the integer 3");
    }
}
