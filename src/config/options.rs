//! How a group of options is declared: once, as a struct whose fields are at the same
//! time the flags (`--grpc-addr`), their `STEPGATE_*` variables (the `env` of the
//! `#[arg]`), and the TOML keys (the field's name). Every layer (flags with their
//! variables, the file) reads into the same struct, with every field optional; layers
//! are merged field by field with the generated `or` and validated by the group.
//!
//! The file is read one group at a time from the same text, so a bad value is reported
//! by the TOML parser with its line and column; a key no group declares is refused the
//! way `deny_unknown_fields` refuses it.

use std::{fmt, path::Path, sync::LazyLock};

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

use super::ConfigError;

/// Declares a group of options (see the module's documentation): each field is written
/// as its value type and becomes `Option<type>`. Also generates `KEYS` (the group's
/// TOML keys, which are also its flags' ids) and `or`, the field-by-field merge.
macro_rules! options {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $(
                $(#[$field_meta:meta])*
                pub $field:ident: $ty:ty,
            )*
        }
    ) => {
        #[derive(Debug, Default, Clone, PartialEq, clap::Args, serde::Deserialize)]
        #[serde(default)]
        $(#[$meta])*
        pub struct $name {
            $(
                $(#[$field_meta])*
                pub $field: Option<$ty>,
            )*
        }

        impl $name {
            /// The group's TOML keys, which are also its flags' ids.
            pub const KEYS: &'static [&'static str] = &[$(stringify!($field)),*];

            /// Each value set in `self`, else the one in `lower`.
            #[must_use]
            pub fn or(self, lower: Self) -> Self {
                Self {
                    $($field: self.$field.or(lower.$field),)*
                }
            }
        }
    };
}
pub(super) use options;

/// One group's values from the file text (its keys only).
pub(super) fn group_from_toml<G: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
) -> Result<G, ConfigError> {
    toml::from_str(text).map_err(|e| file_error(path, &e))
}

/// Refuses a key of the file no group declares, as `deny_unknown_fields` would (the
/// same message, pointing at the key).
pub(super) fn refuse_unknown_keys(
    path: &Path,
    text: &str,
    keys: &'static [&'static str],
) -> Result<(), ConfigError> {
    toml::Deserializer::parse(text)
        .and_then(|de| de.deserialize_map(KnownKeys(keys)))
        .map_err(|e| file_error(path, &e))
}

fn file_error(path: &Path, e: &toml::de::Error) -> ConfigError {
    ConfigError(vec![format!(
        "{}: {}",
        path.display(),
        e.to_string().trim()
    )])
}

/// Every key of the file must be one of these; the values are the groups' to read.
struct KnownKeys(&'static [&'static str]);

impl<'de> Visitor<'de> for KnownKeys {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a table of stepgate settings")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_key_seed(KnownKey(self.0))?.is_some() {
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }
}

/// A key checked against the declared ones while it is read, so the parser points at it.
struct KnownKey(&'static [&'static str]);

impl<'de> DeserializeSeed<'de> for KnownKey {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KnownKey {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a setting's name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<(), E> {
        if self.0.contains(&key) {
            Ok(())
        } else {
            Err(E::unknown_field(key, self.0))
        }
    }
}

/// Joins the groups' keys into one list that lives as long as the program.
pub(super) fn all_keys(groups: &[&'static [&'static str]]) -> Vec<&'static str> {
    groups
        .iter()
        .flat_map(|keys| keys.iter().copied())
        .collect()
}

/// Keeps a list built at first use for the rest of the program.
pub(super) type KeyList = LazyLock<Vec<&'static str>>;
