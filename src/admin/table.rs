//! Result sets as PgBouncer sends them: RowDescription with table OID 0, attnum 0, typmod -1 and
//! text format, one DataRow per row, CommandComplete `SHOW`.

use bytes::{BufMut, BytesMut};

/// A column's wire type, as PgBouncer's type letters give them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Col {
    /// `s`, and `T` (PgBouncer sends its timestamps as text).
    Text,
    /// `i`
    Int4,
    /// `q`
    Int8,
    /// `N`: counters that could overflow bigint.
    Numeric,
}

impl Col {
    pub fn oid(self) -> u32 {
        match self {
            Col::Text => 25,
            Col::Int4 => 23,
            Col::Int8 => 20,
            Col::Numeric => 1700,
        }
    }

    fn typlen(self) -> i16 {
        match self {
            Col::Int4 => 4,
            Col::Int8 => 8,
            Col::Text | Col::Numeric => -1,
        }
    }
}

/// One value of a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Val<'a> {
    Null,
    Text(std::borrow::Cow<'a, str>),
    Int(i64),
    Uint(u64),
}

impl<'a> From<&'a str> for Val<'a> {
    fn from(s: &'a str) -> Self {
        Val::Text(s.into())
    }
}

impl From<String> for Val<'_> {
    fn from(s: String) -> Self {
        Val::Text(s.into())
    }
}

impl<'a> From<Option<&'a str>> for Val<'a> {
    fn from(s: Option<&'a str>) -> Self {
        s.map_or(Val::Null, Val::from)
    }
}

impl From<u64> for Val<'_> {
    fn from(n: u64) -> Self {
        Val::Uint(n)
    }
}

impl From<usize> for Val<'_> {
    fn from(n: usize) -> Self {
        Val::Uint(n as u64)
    }
}

impl From<i64> for Val<'_> {
    fn from(n: i64) -> Self {
        Val::Int(n)
    }
}

impl From<i32> for Val<'_> {
    fn from(n: i32) -> Self {
        Val::Int(n.into())
    }
}

/// Writes one result set into `out`.
pub struct Table<'o> {
    out: &'o mut BytesMut,
    cols: &'static [(&'static str, Col)],
}

impl<'o> Table<'o> {
    /// Starts a result set: its RowDescription.
    pub fn new(out: &'o mut BytesMut, cols: &'static [(&'static str, Col)]) -> Self {
        let start = out.len();
        out.put_u8(b'T');
        out.put_u32(0);
        out.put_i16(cols.len() as i16);
        for (name, col) in cols {
            out.put_slice(name.as_bytes());
            out.put_u8(0);
            out.put_u32(0);
            out.put_i16(0);
            out.put_u32(col.oid());
            out.put_i16(col.typlen());
            out.put_i32(-1);
            out.put_i16(0);
        }
        patch_len(out, start);
        Self { out, cols }
    }

    /// One DataRow. An int4 column is clamped to its range, as a C `int` would not be.
    pub fn row(&mut self, values: &[Val<'_>]) {
        debug_assert_eq!(values.len(), self.cols.len());
        let start = self.out.len();
        self.out.put_u8(b'D');
        self.out.put_u32(0);
        self.out.put_i16(values.len() as i16);
        for (v, (_, col)) in values.iter().zip(self.cols) {
            let text: std::borrow::Cow<'_, str> = match v {
                Val::Null => {
                    self.out.put_i32(-1);
                    continue;
                }
                Val::Text(s) => s.clone(),
                Val::Int(n) if *col == Col::Int4 => (*n)
                    .clamp(i32::MIN.into(), i32::MAX.into())
                    .to_string()
                    .into(),
                Val::Uint(n) if *col == Col::Int4 => (*n).min(i32::MAX as u64).to_string().into(),
                Val::Uint(n) if *col == Col::Int8 => (*n).min(i64::MAX as u64).to_string().into(),
                Val::Int(n) => n.to_string().into(),
                Val::Uint(n) => n.to_string().into(),
            };
            self.out.put_i32(text.len() as i32);
            self.out.put_slice(text.as_bytes());
        }
        patch_len(self.out, start);
    }

    /// CommandComplete `SHOW`.
    pub fn finish(self) {
        crate::proto::encode::command_complete(self.out, "SHOW");
    }
}

fn patch_len(out: &mut BytesMut, start: usize) {
    let len = (out.len() - start - 1) as u32;
    out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_is_pgbouncers_bytes() {
        let mut out = BytesMut::new();
        let mut t = Table::new(&mut out, &[("list", Col::Text), ("items", Col::Int4)]);
        t.row(&["pools".into(), Val::Uint(u64::MAX)]);
        t.row(&[Val::Null, 3i32.into()]);
        t.finish();
        let mut want = Vec::new();
        want.extend_from_slice(b"T\0\0\0\x35\0\x02");
        want.extend_from_slice(b"list\0\0\0\0\0\0\0\0\0\0\x19\xff\xff\xff\xff\xff\xff\0\0");
        want.extend_from_slice(b"items\0\0\0\0\0\0\0\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0");
        want.extend_from_slice(b"D\0\0\0\x1d\0\x02\0\0\0\x05pools\0\0\0\x0a2147483647");
        want.extend_from_slice(b"D\0\0\0\x0f\0\x02\xff\xff\xff\xff\0\0\0\x013");
        want.extend_from_slice(b"C\0\0\0\x09SHOW\0");
        assert_eq!(&out[..], &want[..]);
    }
}
