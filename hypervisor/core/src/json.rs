//! How HV-SUMMARY spells values that are not plain numbers and strings, for serde: 64-bit
//! registers as hex text, and enums by the one name each already has (`as_str`/`parse`, the
//! manifest's spelling), so no second list of names exists for JSON.

/// A 64-bit register as `"0x…"` text: JSON numbers above 2^53 lose precision in many readers.
pub mod hex {
    use alloc::format;
    use alloc::string::String;
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{v:#x}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).ok_or_else(|| D::Error::custom(format!("`{text}` is not 0x-prefixed hex")))
    }

    pub fn parse(text: &str) -> Option<u64> {
        u64::from_str_radix(text.strip_prefix("0x")?, 16).ok()
    }

    /// An MSR that may be absent (`null`).
    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
            match v {
                Some(v) => crate::json::hex::serialize(v, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
            #[derive(Deserialize)]
            struct Hex(#[serde(with = "super")] u64);
            Ok(Option::<Hex>::deserialize(d)?.map(|h| h.0))
        }
    }
}

/// `Serialize` and `Deserialize` for enums with `as_str(self) -> &'static str` and
/// `parse(&str) -> Option<Self>`: the JSON name is the `as_str` name.
macro_rules! by_name {
    ($($t:ty),* $(,)?) => {$(
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let name = <alloc::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
                <$t>::parse(&name).ok_or_else(|| {
                    <D::Error as serde::de::Error>::custom(alloc::format!(
                        "unknown {} `{name}`",
                        stringify!($t)
                    ))
                })
            }
        }
    )*};
}
pub(crate) use by_name;

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Regs {
        #[serde(with = "super::hex")]
        a: u64,
        #[serde(with = "super::hex::option")]
        b: Option<u64>,
    }

    #[test]
    fn registers_are_hex_text_and_absent_ones_null() {
        let r = Regs { a: u64::MAX, b: None };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(text, r#"{"a":"0xffffffffffffffff","b":null}"#);
        assert_eq!(serde_json::from_str::<Regs>(&text).unwrap(), r);
        let r = Regs { a: 0, b: Some(0x2137bff00000000) };
        assert_eq!(serde_json::from_str::<Regs>(&serde_json::to_string(&r).unwrap()).unwrap(), r);
        assert!(serde_json::from_str::<Regs>(r#"{"a":"12","b":null}"#).is_err(), "no prefix");
        assert!(serde_json::from_str::<Regs>(r#"{"a":12,"b":null}"#).is_err(), "a number");
    }
}
