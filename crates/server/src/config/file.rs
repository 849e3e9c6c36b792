//! The `switchboard serve --config FILE` file: a flat TOML table whose keys
//! are the `serve` flags with `_` for `-` (`max_frame` for `--max-frame`).
//!
//! The file does not get a parser of its own. Its values are given to clap
//! as the flags' default values ([`ConfigFile::apply`]), so clap's order of
//! sources makes the precedence flags > `SWITCHBOARD_*` environment > file >
//! built-in default, and every value goes through the same value parser as
//! the flag ("30d", "64KiB"). Each value is parsed once here first: clap
//! would report a bad default without the file's name and line (and a debug
//! build panics on one).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{Arg, ArgMatches, Command};
use toml::{Spanned, Value};

use super::Config;

/// A loaded file whose keys and values are all known to be valid.
#[derive(Debug)]
pub struct ConfigFile {
    path: PathBuf,
    entries: Vec<Entry>,
}

#[derive(Debug)]
struct Entry {
    /// The clap argument id, which is also the key.
    key: String,
    /// As the flag would receive them; several for a list.
    values: Vec<String>,
    line: usize,
}

/// A problem with the file, naming it and, when it is about a key or a
/// value, the line and column.
#[derive(Debug)]
pub struct FileError {
    path: PathBuf,
    at: Option<(usize, usize)>,
    message: String,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.at {
            Some((line, column)) => write!(
                f,
                "{}:{line}:{column}: {}",
                self.path.display(),
                self.message
            ),
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

impl std::error::Error for FileError {}

/// A command holding exactly the settings a file may contain: `Config`'s
/// arguments, without `--config` itself or `--help`.
fn settings() -> Command {
    <Config as clap::Args>::augment_args(Command::new("serve"))
        .disable_help_flag(true)
        .disable_version_flag(true)
}

impl ConfigFile {
    /// Reads and checks the file: TOML syntax, every key a setting, every
    /// value accepted by that setting's parser.
    pub fn load(path: &Path) -> Result<ConfigFile, FileError> {
        let error = |at, message: String| FileError {
            path: path.to_path_buf(),
            at,
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| error(None, e.to_string()))?;
        let table: BTreeMap<Spanned<String>, Spanned<Value>> =
            toml::from_str(&text).map_err(|e| {
                let at = e.span().map(|span| line_column(&text, span.start));
                error(at, e.message().trim().to_string())
            })?;
        let settings = settings();
        let mut entries = Vec::new();
        // In file order, so the first problem reported is the first one an
        // editor shows.
        let mut table: Vec<_> = table.into_iter().collect();
        table.sort_by_key(|(key, _)| key.span().start);
        for (key, value) in table {
            let at = Some(line_column(&text, key.span().start));
            let key = key.into_inner();
            if let Value::Table(_) = value.get_ref() {
                return Err(error(
                    at,
                    format!("`[{key}]`: the file is one flat table, without sections"),
                ));
            }
            let Some(arg) = settings
                .get_arguments()
                .find(|a| a.get_id() == key.as_str())
            else {
                return Err(error(at, unknown_key(&key, &settings)));
            };
            let value_at = Some(line_column(&text, value.span().start));
            let values = flag_values(arg, value.into_inner())
                .map_err(|m| error(value_at, format!("{key}: {m}")))?;
            check_values(arg, &values).map_err(|m| error(value_at, format!("{key}: {m}")))?;
            entries.push(Entry {
                key,
                values,
                line: at.map_or(0, |(line, _)| line),
            });
        }
        Ok(ConfigFile {
            path: path.to_path_buf(),
            entries,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes the file's values the defaults of `command`'s arguments (a
    /// command that flattens [`Config`]), below flags and environment.
    pub fn apply(&self, mut command: Command) -> Command {
        for entry in &self.entries {
            let values: Vec<clap::builder::OsStr> =
                entry.values.iter().map(|v| v.clone().into()).collect();
            command = command.mut_arg(&entry.key, |arg| arg.default_values(values));
        }
        command
    }

    /// The line a key is on.
    fn line_of(&self, key: &str) -> Option<usize> {
        self.entries.iter().find(|e| e.key == key).map(|e| e.line)
    }
}

/// The byte offset's 1-based line and column (in characters).
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map_or(0, |current| current.chars().count())
        + 1;
    (line, column)
}

fn unknown_key(key: &str, settings: &Command) -> String {
    let snake = key.replace('-', "_");
    let hint = if settings
        .get_arguments()
        .any(|a| a.get_id() == snake.as_str())
    {
        format!(" (keys are written with `_`: `{snake}`)")
    } else {
        String::new()
    };
    format!("unknown key `{key}`{hint}; `switchboard serve --help` lists the settings")
}

/// Whether the flag takes a comma-separated list.
fn is_list(arg: &Arg) -> bool {
    arg.get_value_delimiter().is_some()
}

/// The value as the strings the flag would get: a list from an array or a
/// comma-separated string, else one string.
fn flag_values(arg: &Arg, value: Value) -> Result<Vec<String>, String> {
    match value {
        Value::Array(items) if is_list(arg) => items.into_iter().map(scalar).collect(),
        Value::Array(_) => Err("expected one value, not a list".into()),
        Value::String(text) if is_list(arg) => {
            let delimiter = arg.get_value_delimiter().unwrap_or(',');
            Ok(text
                .split(delimiter)
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(String::from)
                .collect())
        }
        Value::String(text) if text.trim().is_empty() => {
            Err("empty value (leave the key out to keep the default)".into())
        }
        other => Ok(vec![scalar(other)?]),
    }
}

fn scalar(value: Value) -> Result<String, String> {
    match value {
        Value::String(text) => Ok(text),
        Value::Integer(n) => Ok(n.to_string()),
        Value::Float(x) => Ok(x.to_string()),
        Value::Boolean(b) => Ok(b.to_string()),
        Value::Datetime(_) => Err("a date is not a valid value here".into()),
        Value::Array(_) => Err("lists cannot be nested".into()),
        Value::Table(_) => Err("expected a value, not a table (the file is one flat table)".into()),
    }
}

/// Runs the values through the argument's own parser, as its flag would.
fn check_values(arg: &Arg, values: &[String]) -> Result<(), String> {
    // The argument alone, so that neither the environment nor other
    // arguments' rules take part.
    let alone = arg
        .clone()
        .env(None)
        .required(false)
        .default_values(Vec::<clap::builder::OsStr>::new());
    let long = arg.get_long().unwrap_or(arg.get_id().as_str()).to_string();
    let command = Command::new("value").no_binary_name(true).arg(alone);
    let argv = values
        .iter()
        .map(|v| OsString::from(format!("--{long}={v}")));
    match command.try_get_matches_from(argv) {
        Ok(_) => Ok(()),
        Err(error) => Err(describe_clap_error(&error)),
    }
}

/// clap's message about one value, without its `error:` prefix, usage and
/// tips, which talk about flags.
fn describe_clap_error(error: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let value = match error.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(value)) => format!("`{value}`"),
        _ => "value".into(),
    };
    match error.kind() {
        ErrorKind::ValueValidation => {
            use std::error::Error;
            match error.source() {
                Some(reason) => format!("invalid {value}: {reason}"),
                None => format!("invalid {value}"),
            }
        }
        ErrorKind::InvalidValue => match error.get(ContextKind::ValidValue) {
            Some(ContextValue::Strings(valid)) => {
                format!("invalid {value} (possible values: {})", valid.join(", "))
            }
            _ => format!("invalid {value}"),
        },
        _ => {
            let rendered = error.to_string();
            let first = rendered.lines().next().unwrap_or_default();
            first.trim_start_matches("error: ").to_string()
        }
    }
}

/// The effective configuration as a TOML file, each value with where it came
/// from. `matches` are those of a command that flattens [`Config`]; values
/// of secret settings (those whose environment value `--help` hides) are
/// replaced by `<redacted>`.
pub fn describe(matches: &ArgMatches, file: Option<&ConfigFile>) -> String {
    let mut out = String::from(
        "# The effective configuration: flags > SWITCHBOARD_* environment > \
         config file > defaults.\n",
    );
    for arg in settings().get_arguments() {
        let id = arg.get_id().as_str();
        let source = match matches.value_source(id) {
            Some(ValueSource::CommandLine) => {
                format!("--{}", arg.get_long().unwrap_or(id))
            }
            Some(ValueSource::EnvVariable) => arg.get_env().map_or("environment".into(), |env| {
                env.to_string_lossy().into_owned()
            }),
            _ => match file.and_then(|f| f.line_of(id).map(|line| (f, line))) {
                Some((file, line)) => format!("{}:{line}", file.path().display()),
                None => "default".into(),
            },
        };
        let raw: Vec<String> = matches
            .get_raw(id)
            .map(|values| values.map(|v| v.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let line = if raw.is_empty() && !is_list(arg) {
            format!("# {id} is not set")
        } else if arg.is_hide_env_values_set() {
            format!("{id} = \"<redacted>\"  # {source}")
        } else if is_list(arg) {
            let items: Vec<String> = raw.iter().map(|v| toml_string(v)).collect();
            format!("{id} = [{}]  # {source}", items.join(", "))
        } else {
            let value = raw.join(",");
            let shown = match value.parse::<i64>() {
                Ok(number) => number.to_string(),
                Err(_) => toml_string(&value),
            };
            format!("{id} = {shown}  # {source}")
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

fn toml_string(text: &str) -> String {
    Value::String(text.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches, Parser};

    #[derive(Parser, Debug)]
    struct Serve {
        #[command(flatten)]
        config: Config,
    }

    fn write(text: &str) -> PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "switchboard-config-{}-{}.toml",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, text).unwrap();
        path
    }

    fn load(text: &str) -> Result<ConfigFile, String> {
        let path = write(text);
        let loaded = ConfigFile::load(&path).map_err(|e| {
            // Tests compare the message without the temporary file's name.
            let shown = e.to_string();
            shown.replacen(&path.display().to_string(), "FILE", 1)
        });
        let _ = std::fs::remove_file(&path);
        loaded
    }

    /// Parses `args` (flags only, no environment) with the file's values
    /// applied, as `serve` does.
    fn parse(file: &ConfigFile, args: &[&str]) -> (Config, ArgMatches) {
        let command = file.apply(Serve::command().mut_args(|a| a.env(None)));
        let matches = command
            .try_get_matches_from(std::iter::once("serve").chain(args.iter().copied()))
            .unwrap();
        (Serve::from_arg_matches(&matches).unwrap().config, matches)
    }

    #[test]
    fn values_use_the_flag_parsers() {
        let file = load(
            "listen = \"0.0.0.0:9000\"\nheartbeat = \"30s\"\nretention_age = \"7d\"\n\
             max_frame = \"1MiB\"\nrate_limit = 50\nstore = \"memory\"\n\
             allowed_origins = [\"https://a.example\", \"https://*.b.example\"]\n\
             trusted_proxies = \"10.0.0.1, 10.0.0.2\"\napi_key = \"k\"\n",
        )
        .unwrap();
        let (config, _) = parse(&file, &[]);
        assert_eq!(config.listen.to_string(), "0.0.0.0:9000");
        assert_eq!(config.heartbeat, std::time::Duration::from_secs(30));
        assert_eq!(config.retention_age.as_secs(), 7 * 86_400);
        assert_eq!(config.max_frame, 1 << 20);
        assert_eq!(config.rate_limit, 50);
        assert_eq!(config.store, crate::config::StoreKind::Memory);
        assert_eq!(
            config.allowed_origins,
            ["https://a.example", "https://*.b.example"]
        );
        assert_eq!(config.trusted_proxies.len(), 2);
        assert_eq!(config.api_key.as_deref(), Some("k"));
        // Untouched settings keep their built-in defaults.
        assert_eq!(config.rate_burst, 200);
    }

    #[test]
    fn flags_win_over_the_file() {
        let file =
            load("heartbeat = \"30s\"\nallowed_origins = [\"https://a.example\"]\n").unwrap();
        let (config, _) = parse(
            &file,
            &[
                "--heartbeat",
                "10s",
                "--allowed-origins",
                "https://c.example",
            ],
        );
        assert_eq!(config.heartbeat.as_secs(), 10);
        assert_eq!(config.allowed_origins, ["https://c.example"]);
    }

    #[test]
    fn errors_name_the_line_and_key() {
        assert_eq!(
            load("heartbeat = \"30s\"\n\nmax_frame = \"1TB\"\n").unwrap_err(),
            "FILE:3:13: max_frame: invalid `1TB`: unknown size unit `tb` (use B, KiB or MiB)"
        );
        assert_eq!(
            load("heartbeat = \"30s\"\nmax_fram = 5\n").unwrap_err(),
            "FILE:2:1: unknown key `max_fram`; `switchboard serve --help` lists the settings"
        );
        let dashed = load("max-frame = \"1KiB\"\n").unwrap_err();
        assert!(dashed.contains("written with `_`: `max_frame`"), "{dashed}");
        let store = load("store = \"redis\"\n").unwrap_err();
        assert_eq!(
            store,
            "FILE:1:9: store: invalid `redis` (possible values: sqlite, memory)"
        );
        let negative = load("rate_limit = -1\n").unwrap_err();
        assert!(
            negative.starts_with("FILE:1:14: rate_limit: invalid `-1`"),
            "{negative}"
        );
        let listen = load("listen = \"nowhere\"\n").unwrap_err();
        assert!(
            listen.starts_with("FILE:1:10: listen: invalid `nowhere`: "),
            "{listen}"
        );
        let list = load("heartbeat = [\"1s\"]\n").unwrap_err();
        assert_eq!(list, "FILE:1:13: heartbeat: expected one value, not a list");
        let table = load("[server]\nlisten = \"0.0.0.0:1\"\n").unwrap_err();
        assert_eq!(
            table,
            "FILE:1:2: `[server]`: the file is one flat table, without sections"
        );
        let empty = load("api_key = \"\"\n").unwrap_err();
        assert!(empty.contains("api_key: empty value"), "{empty}");
        let proxy = load("trusted_proxies = [\"10.0.0.1\", \"proxy\"]\n").unwrap_err();
        assert!(
            proxy.starts_with("FILE:1:19: trusted_proxies: invalid `proxy`"),
            "{proxy}"
        );
    }

    #[test]
    fn toml_syntax_errors_have_a_position() {
        let broken = load("heartbeat = \"30s\"\nmax_frame = \n").unwrap_err();
        assert!(broken.starts_with("FILE:2:"), "{broken}");
        let twice = load("heartbeat = \"30s\"\nheartbeat = \"40s\"\n").unwrap_err();
        assert!(twice.starts_with("FILE:2:1: "), "{twice}");
        let missing = ConfigFile::load(Path::new("/nonexistent/switchboard.toml")).unwrap_err();
        assert!(
            missing
                .to_string()
                .starts_with("/nonexistent/switchboard.toml: "),
            "{missing}"
        );
    }

    #[test]
    fn describe_shows_sources_and_hides_secrets() {
        let file = load("heartbeat = \"30s\"\njwt_secret = \"file-secret\"\n").unwrap();
        let (_, matches) = parse(&file, &["--api-key", "flag-key", "--max-frame", "1MiB"]);
        let shown = describe(&matches, Some(&file));
        assert!(!shown.contains("file-secret"), "{shown}");
        assert!(!shown.contains("flag-key"), "{shown}");
        assert!(
            shown.contains("\napi_key = \"<redacted>\"  # --api-key\n"),
            "{shown}"
        );
        assert!(
            shown.contains("\nmax_frame = \"1MiB\"  # --max-frame\n"),
            "{shown}"
        );
        let from_file = format!("\nheartbeat = \"30s\"  # {}:1\n", file.path().display());
        assert!(shown.contains(&from_file), "{shown}");
        assert!(shown.contains("\nrate_limit = 100  # default\n"), "{shown}");
        assert!(shown.contains("\n# jwks is not set\n"), "{shown}");
        assert!(
            shown.contains("\nallowed_origins = []  # default\n"),
            "{shown}"
        );
        // Without the secrets, what it prints is a file that loads.
        let without_secrets: String = shown
            .lines()
            .filter(|l| !l.contains("<redacted>"))
            .map(|l| format!("{l}\n"))
            .collect();
        load(&without_secrets).unwrap();
    }

    #[test]
    fn the_example_file_loads_and_names_every_setting() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../switchboard.example.toml");
        ConfigFile::load(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        // Set or commented out, each setting is there to be found.
        for arg in settings().get_arguments() {
            let key = format!("{} =", arg.get_id());
            assert!(
                text.lines()
                    .any(|l| l.trim_start_matches(['#', ' ']).starts_with(&key)),
                "{key} is missing from switchboard.example.toml"
            );
        }
    }

    #[test]
    fn every_setting_is_a_key() {
        // Each setting's flag is its key with `-` for `_`: what the docs
        // promise, and what `unknown_key`'s hint relies on.
        for arg in settings().get_arguments() {
            let long = arg.get_long().unwrap();
            assert_eq!(long.replace('-', "_"), arg.get_id().as_str());
        }
    }
}
