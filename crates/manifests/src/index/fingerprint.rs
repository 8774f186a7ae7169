//! A 64-bit fingerprint of a value, computed through its `Serialize`
//! implementation so it follows every field of the object types (present
//! and future) without them having to implement `Hash`.
//!
//! The index keeps a fingerprint per object instead of the object: the
//! registry holds the one full copy. Two different definitions with the same
//! fingerprint (a 2^-64 chance per change) would make the index miss that
//! change; the next edit of the object applies it. A value whose
//! serialization fails (none of the object types can) has no fingerprint and
//! counts as changed every time.

use std::hash::{DefaultHasher, Hasher};

use serde::ser::{self, Serialize};

/// The fingerprint of `value`.
pub(crate) fn of<T: Serialize + ?Sized>(value: &T) -> Option<u64> {
    let mut s = FingerprintSerializer(DefaultHasher::new());
    value.serialize(&mut s).ok().map(|()| s.0.finish())
}

/// Feeds every value, with a tag per kind and lengths for sequences, into
/// the hasher, so that e.g. `["ab"]` and `["a", "b"]` differ.
struct FingerprintSerializer(DefaultHasher);

/// A type's own `Serialize` refused (hashing itself cannot fail).
#[derive(Debug)]
struct Failed;

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("value cannot be serialized")
    }
}

impl std::error::Error for Failed {}

impl ser::Error for Failed {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Failed
    }
}

impl FingerprintSerializer {
    fn tag(&mut self, tag: u8) {
        self.0.write_u8(tag);
    }

    fn bytes(&mut self, tag: u8, v: &[u8]) {
        self.tag(tag);
        self.0.write_usize(v.len());
        self.0.write(v);
    }
}

macro_rules! scalar {
    ($($method:ident($ty:ty) => $tag:literal, $write:ident;)*) => {
        $(fn $method(self, v: $ty) -> Result<(), Failed> {
            self.tag($tag);
            self.0.$write(v as _);
            Ok(())
        })*
    };
}

impl ser::Serializer for &mut FingerprintSerializer {
    type Ok = ();
    type Error = Failed;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    scalar! {
        serialize_bool(bool) => 1, write_u8;
        serialize_i8(i8) => 2, write_i64;
        serialize_i16(i16) => 2, write_i64;
        serialize_i32(i32) => 2, write_i64;
        serialize_i64(i64) => 2, write_i64;
        serialize_u8(u8) => 3, write_u64;
        serialize_u16(u16) => 3, write_u64;
        serialize_u32(u32) => 3, write_u64;
        serialize_u64(u64) => 3, write_u64;
        serialize_char(char) => 4, write_u32;
    }

    fn serialize_i128(self, v: i128) -> Result<(), Failed> {
        self.tag(5);
        self.0.write_i128(v);
        Ok(())
    }

    fn serialize_u128(self, v: u128) -> Result<(), Failed> {
        self.tag(6);
        self.0.write_u128(v);
        Ok(())
    }

    fn serialize_f32(self, v: f32) -> Result<(), Failed> {
        self.serialize_f64(f64::from(v))
    }

    fn serialize_f64(self, v: f64) -> Result<(), Failed> {
        self.tag(7);
        self.0.write_u64(v.to_bits());
        Ok(())
    }

    fn serialize_str(self, v: &str) -> Result<(), Failed> {
        self.bytes(8, v.as_bytes());
        Ok(())
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<(), Failed> {
        self.bytes(9, v);
        Ok(())
    }

    fn serialize_none(self) -> Result<(), Failed> {
        self.tag(10);
        Ok(())
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Failed> {
        self.tag(11);
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<(), Failed> {
        self.tag(12);
        Ok(())
    }

    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Failed> {
        self.serialize_unit()
    }

    fn serialize_unit_variant(self, _: &'static str, index: u32, _: &'static str) -> Result<(), Failed> {
        self.tag(13);
        self.0.write_u32(index);
        Ok(())
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, value: &T) -> Result<(), Failed> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
        value: &T,
    ) -> Result<(), Failed> {
        self.tag(14);
        self.0.write_u32(index);
        value.serialize(self)
    }

    fn serialize_seq(self, len: Option<usize>) -> Result<Self, Failed> {
        self.tag(15);
        // Lengths unknown up front are closed by `end`'s tag instead.
        self.0.write_usize(len.unwrap_or(usize::MAX));
        Ok(self)
    }

    fn serialize_tuple(self, len: usize) -> Result<Self, Failed> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_struct(self, _: &'static str, len: usize) -> Result<Self, Failed> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_variant(self, _: &'static str, index: u32, _: &'static str, len: usize) -> Result<Self, Failed> {
        self.tag(14);
        self.0.write_u32(index);
        self.serialize_seq(Some(len))
    }

    fn serialize_map(self, len: Option<usize>) -> Result<Self, Failed> {
        self.tag(16);
        self.0.write_usize(len.unwrap_or(usize::MAX));
        Ok(self)
    }

    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self, Failed> {
        self.tag(17);
        Ok(self)
    }

    fn serialize_struct_variant(self, _: &'static str, index: u32, _: &'static str, _: usize) -> Result<Self, Failed> {
        self.tag(14);
        self.0.write_u32(index);
        self.serialize_struct("", 0)
    }
}

/// One implementation for every compound: elements in order, then an end tag.
macro_rules! compound {
    ($($trait:ident { $($method:ident),* })*) => {
        $(impl ser::$trait for &mut FingerprintSerializer {
            type Ok = ();
            type Error = Failed;
            $(fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Failed> {
                value.serialize(&mut **self)
            })*
            fn end(self) -> Result<(), Failed> {
                self.tag(18);
                Ok(())
            }
        })*
    };
}

compound! {
    SerializeSeq { serialize_element }
    SerializeTuple { serialize_element }
    SerializeTupleStruct { serialize_field }
    SerializeTupleVariant { serialize_field }
    SerializeMap { serialize_key, serialize_value }
}

impl ser::SerializeStruct for &mut FingerprintSerializer {
    type Ok = ();
    type Error = Failed;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result<(), Failed> {
        self.bytes(19, key.as_bytes());
        value.serialize(&mut **self)
    }
    fn skip_field(&mut self, key: &'static str) -> Result<(), Failed> {
        self.bytes(20, key.as_bytes());
        Ok(())
    }
    fn end(self) -> Result<(), Failed> {
        self.tag(18);
        Ok(())
    }
}

impl ser::SerializeStructVariant for &mut FingerprintSerializer {
    type Ok = ();
    type Error = Failed;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result<(), Failed> {
        ser::SerializeStruct::serialize_field(self, key, value)
    }
    fn end(self) -> Result<(), Failed> {
        self.tag(18);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use edgemesh_core::build::{service, slice};

    use super::of;

    #[test]
    fn equal_objects_agree_and_any_field_change_shows() {
        let a = service("default", "web").port("http", 80, 8080).annotation("edgemesh.io/x", "1").object();
        assert_eq!(of(&a), of(&a.clone()));
        let changed = [
            service("default", "web").port("http", 80, 8081).annotation("edgemesh.io/x", "1").object(),
            service("default", "web").port("http", 81, 8080).annotation("edgemesh.io/x", "1").object(),
            service("default", "web").port("http", 80, 8080).annotation("edgemesh.io/x", "2").object(),
            service("default", "web").port("http", 80, 8080).object(),
            service("other", "web").port("http", 80, 8080).annotation("edgemesh.io/x", "1").object(),
            service("default", "web").named_target("http", 80, "8080").annotation("edgemesh.io/x", "1").object(),
            service("default", "web").udp_port("http", 80, 8080).annotation("edgemesh.io/x", "1").object(),
        ];
        for c in &changed {
            assert_ne!(of(&a), of(c), "{c:?}");
        }
        let e1 = slice("default", "web-1", "web").endpoint("10.0.0.1", "n1").port("http", 8080).object();
        let e2 = slice("default", "web-1", "web").not_ready("10.0.0.1", "n1").port("http", 8080).object();
        let e3 = slice("default", "web-1", "web").endpoint("10.0.0.1", "n2").port("http", 8080).object();
        assert_ne!(of(&e1), of(&e2));
        assert_ne!(of(&e1), of(&e3));
    }

    #[test]
    fn strings_are_delimited() {
        assert_ne!(of(&("ab", "c")), of(&("a", "bc")));
        assert_ne!(of(&vec!["ab"]), of(&vec!["a", "b"]));
        assert_ne!(of(&Some(0u8)), of(&None::<u8>));
    }
}
