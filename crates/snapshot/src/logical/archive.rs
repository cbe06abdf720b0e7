//! Reading `pg_dump`'s custom archive format, as far as the loader needs
//! it to restore the data section itself (see `logical/direct.rs`):
//! the header, the table of contents and the data blocks, streamed.
//!
//! The layout (PostgreSQL's `pg_backup_archiver.c` and
//! `pg_backup_custom.c`, archive versions 1.14 to 1.16: PostgreSQL 12 to
//! 18):
//!
//! ```text
//! header   "PGDMP", version (3 bytes), int size, offset size, format (1: custom),
//!          compression (an int level before 1.15, an algorithm byte since),
//!          creation time (7 ints), database, server and pg_dump versions (strings)
//! toc      an int count, then per entry: dump id, had-dumper (ints), table oid,
//!          oid, tag, desc (strings), section (int), definition, drop statement,
//!          COPY statement, schema, tablespace, table access method (strings),
//!          relkind (an int, since 1.16), owner, "with oids" (strings),
//!          dependencies (strings up to a null one), data offset (a flag byte
//!          and offset-size bytes)
//! data     blocks until the end of the input: a type byte (1: a table's
//!          data, 3: large objects), the entry's dump id (int), then
//!          chunks (int length, bytes) up to a zero length; large objects
//!          are (int oid, chunks) up to an oid of 0
//! ```
//!
//! An int is a sign byte and `int size` bytes of magnitude, least
//! significant first; a string is an int length (-1: null) and the bytes.
//!
//! Only uncompressed archives are read here (warmspare's backups run
//! `pg_dump --compress=0` and compress the stream themselves): anything
//! else is [`Archive::unsupported`], and `pg_restore` reads it instead.

use tokio::io::{AsyncRead, AsyncReadExt};

/// Archive versions read here (`pg_dump` of PostgreSQL 12 to 18).
const VERSIONS: std::ops::RangeInclusive<(u8, u8)> = (1, 14)..=(1, 16);

/// The custom format's format byte.
const FORMAT_CUSTOM: u8 = 1;

/// Data block types.
const BLOCK_DATA: u8 = 1;
const BLOCK_BLOBS: u8 = 3;

/// Sections of the table of contents.
pub(super) const SECTION_DATA: i64 = 3;

/// Offset flags of a table of contents entry.
const OFFSET_FLAGS: std::ops::RangeInclusive<u8> = 1..=3;

/// The read buffer; also the largest string read in one go is not bound
/// by it (strings are read piecewise).
const BUFFER: usize = 1 << 20;

/// The largest string accepted in the table of contents (a definition):
/// a bound for memory against a corrupt length.
const MAX_STRING: usize = 1 << 30;

/// Why an archive cannot be read.
#[derive(Debug, thiserror::Error)]
pub(super) enum ArchiveError {
    /// The input failed, or ended early.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The bytes are not what the format says.
    #[error("{0}")]
    Format(String),
}

type Result<T, E = ArchiveError> = std::result::Result<T, E>;

fn format_error<T>(what: impl Into<String>) -> Result<T> {
    Err(ArchiveError::Format(what.into()))
}

/// The archive's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Header {
    /// Major, minor and revision of the archive format.
    pub(super) version: (u8, u8, u8),
    pub(super) int_size: u8,
    pub(super) offset_size: u8,
    pub(super) format: u8,
    /// The compression level (before 1.15) or algorithm (since): 0 is
    /// none in both.
    pub(super) compression: i64,
    pub(super) database: Option<String>,
    pub(super) server_version: Option<String>,
    pub(super) dump_version: Option<String>,
}

/// One entry of the table of contents (the fields the loader uses).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct Entry {
    pub(super) dump_id: i64,
    pub(super) had_dumper: bool,
    pub(super) tag: Option<String>,
    pub(super) desc: Option<String>,
    pub(super) section: i64,
    pub(super) defn: Option<String>,
    pub(super) copy_stmt: Option<String>,
    pub(super) namespace: Option<String>,
    pub(super) owner: Option<String>,
}

/// A data block's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Block {
    /// The data of the entry with this dump id (a table's COPY rows).
    Data(i64),
    /// The large objects of the entry with this dump id.
    Blobs(i64),
}

/// A custom-format archive being read from `R`: header and table of
/// contents read by [`Archive::open`], then the data blocks in order.
pub(super) struct Archive<R> {
    input: Input<R>,
    pub(super) header: Header,
    pub(super) toc: Vec<Entry>,
    /// Bytes left of the data chunk being read.
    remaining: usize,
}

impl<R: AsyncRead + Unpin> Archive<R> {
    /// Reads the header and the table of contents.
    pub(super) async fn open(reader: R) -> Result<Self> {
        let mut input = Input::new(reader);
        let mut magic = [0u8; 5];
        input.read_exact(&mut magic).await?;
        if &magic != b"PGDMP" {
            return format_error("no PGDMP magic at its start");
        }
        let version = (
            input.byte().await?,
            input.byte().await?,
            input.byte().await?,
        );
        let int_size = input.byte().await?;
        let offset_size = input.byte().await?;
        if !(1..=8).contains(&int_size) || !(1..=8).contains(&offset_size) {
            return format_error(format!(
                "integer size {int_size} or offset size {offset_size} out of range"
            ));
        }
        input.int_size = int_size;
        let format = input.byte().await?;
        let mut archive = Self {
            input,
            header: Header {
                version,
                int_size,
                offset_size,
                format,
                compression: 0,
                database: None,
                server_version: None,
                dump_version: None,
            },
            toc: Vec::new(),
            remaining: 0,
        };
        if archive.unsupported().is_some() {
            // Nothing more is read from an archive of another version or
            // format: its layout may differ from here on.
            return Ok(archive);
        }
        let (input, header) = (&mut archive.input, &mut archive.header);
        header.compression = if version >= (1, 15, 0) {
            i64::from(input.byte().await?)
        } else {
            input.int().await?
        };
        for _ in 0..7 {
            input.int().await?; // creation time
        }
        header.database = input.string().await?;
        header.server_version = input.string().await?;
        header.dump_version = input.string().await?;

        let count = archive.input.int().await?;
        if count < 0 {
            return format_error(format!("a table of contents of {count} entries"));
        }
        for _ in 0..count {
            let entry = archive.entry().await?;
            archive.toc.push(entry);
        }
        Ok(archive)
    }

    /// Why the loader cannot read this archive's data (`pg_restore` then
    /// reads it), or `None`.
    pub(super) fn unsupported(&self) -> Option<String> {
        let h = &self.header;
        let (major, minor, revision) = h.version;
        if !VERSIONS.contains(&(major, minor)) {
            return Some(format!("archive version {major}.{minor}-{revision}"));
        }
        if h.format != FORMAT_CUSTOM {
            return Some(format!("archive format {}", h.format));
        }
        if h.compression != 0 {
            return Some(format!("compressed archive data ({})", h.compression));
        }
        None
    }

    async fn entry(&mut self) -> Result<Entry> {
        let v = self.header.version;
        let input = &mut self.input;
        let dump_id = input.int().await?;
        let had_dumper = input.int().await? != 0;
        input.string().await?; // table oid
        input.string().await?; // oid
        let tag = input.string().await?;
        let desc = input.string().await?;
        let section = input.int().await?;
        let defn = input.string().await?;
        input.string().await?; // drop statement
        let copy_stmt = input.string().await?;
        let namespace = input.string().await?;
        input.string().await?; // tablespace
        input.string().await?; // table access method
        if v >= (1, 16, 0) {
            input.int().await?; // relkind
        }
        let owner = input.string().await?;
        if input.string().await?.as_deref() == Some("true") {
            return format_error("a table WITH OIDS");
        }
        while input.string().await?.is_some() {} // dependencies
        let flag = input.byte().await?;
        if !OFFSET_FLAGS.contains(&flag) {
            return format_error(format!("data offset flag {flag} of entry {dump_id}"));
        }
        for _ in 0..self.header.offset_size {
            input.byte().await?;
        }
        Ok(Entry {
            dump_id,
            had_dumper,
            tag,
            desc,
            section,
            defn,
            copy_stmt,
            namespace,
            owner,
        })
    }

    /// The next data block's start, `None` at the end of the archive.
    pub(super) async fn next_block(&mut self) -> Result<Option<Block>> {
        if self.remaining != 0 {
            return format_error("a data block read only in part");
        }
        if self.input.at_end().await? {
            return Ok(None);
        }
        let kind = self.input.byte().await?;
        let id = self.input.int().await?;
        match kind {
            BLOCK_DATA => Ok(Some(Block::Data(id))),
            BLOCK_BLOBS => Ok(Some(Block::Blobs(id))),
            other => format_error(format!("data block type {other} (dump id {id})")),
        }
    }

    /// Appends the current data's chunks to `out` until it holds at least
    /// `want` bytes or the data ends (its zero-length chunk read): then
    /// returns `true`.
    pub(super) async fn read_data(&mut self, out: &mut Vec<u8>, want: usize) -> Result<bool> {
        loop {
            if let Some(ended) = self.input.data(&mut self.remaining, out, want)? {
                return Ok(ended);
            }
            let header = if self.remaining > 0 {
                1
            } else {
                1 + usize::from(self.input.int_size)
            };
            self.input.need(header).await?;
        }
    }

    /// Within a large objects block: the next object's oid, `None` after
    /// the last. Its content follows ([`Self::read_data`]).
    pub(super) async fn next_blob(&mut self) -> Result<Option<u32>> {
        match self.input.int().await? {
            0 => Ok(None),
            oid => u32::try_from(oid)
                .map(Some)
                .map_err(|_| ArchiveError::Format(format!("large object oid {oid}"))),
        }
    }
}

/// The input, buffered, with the format's primitive reads.
struct Input<R> {
    inner: R,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    int_size: u8,
}

impl<R: AsyncRead + Unpin> Input<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            buf: vec![0; BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
            int_size: 4,
        }
    }

    /// Makes at least `n` (≤ the buffer's size) bytes available; an early
    /// end of the input is [`std::io::ErrorKind::UnexpectedEof`].
    async fn need(&mut self, n: usize) -> Result<()> {
        while self.end - self.start < n {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let read = self.inner.read(&mut self.buf[self.end..]).await?;
            if read == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
            }
            self.end += read;
        }
        Ok(())
    }

    /// Whether the input ended (nothing buffered, nothing more to read).
    async fn at_end(&mut self) -> Result<bool> {
        if self.start < self.end {
            return Ok(false);
        }
        self.start = 0;
        self.end = self.inner.read(&mut self.buf).await?;
        Ok(self.end == 0)
    }

    async fn byte(&mut self) -> Result<u8> {
        self.need(1).await?;
        self.start += 1;
        Ok(self.buf[self.start - 1])
    }

    async fn read_exact(&mut self, out: &mut [u8]) -> Result<()> {
        self.need(out.len()).await?;
        out.copy_from_slice(&self.buf[self.start..self.start + out.len()]);
        self.start += out.len();
        Ok(())
    }

    async fn int(&mut self) -> Result<i64> {
        let size = 1 + usize::from(self.int_size);
        self.need(size).await?;
        let value = decode_int(&self.buf[self.start..self.start + size])?;
        self.start += size;
        Ok(value)
    }

    /// Data chunks from what is buffered, without waiting for more input
    /// (5 million rows are 5 million chunks): `remaining` bytes of the
    /// current chunk, then whole chunks, appended to `out` until it holds
    /// `want` bytes (then `Some(false)`) or the zero-length chunk ends the
    /// data (`Some(true)`); `None` when more input is needed.
    fn data(
        &mut self,
        remaining: &mut usize,
        out: &mut Vec<u8>,
        want: usize,
    ) -> Result<Option<bool>> {
        let header = 1 + usize::from(self.int_size);
        loop {
            if *remaining > 0 {
                let took = (*remaining).min(self.end - self.start);
                if took == 0 {
                    return Ok(None);
                }
                out.extend_from_slice(&self.buf[self.start..self.start + took]);
                self.start += took;
                *remaining -= took;
                continue;
            }
            if out.len() >= want {
                return Ok(Some(false));
            }
            if self.end - self.start < header {
                return Ok(None);
            }
            let len = decode_int(&self.buf[self.start..self.start + header])?;
            self.start += header;
            if len == 0 {
                return Ok(Some(true));
            }
            *remaining = usize::try_from(len)
                .map_err(|_| ArchiveError::Format(format!("a data chunk of {len} bytes")))?;
        }
    }

    /// An int length (-1: null) and the bytes, as UTF-8.
    async fn string(&mut self) -> Result<Option<String>> {
        let len = self.int().await?;
        if len < 0 {
            return Ok(None);
        }
        let len = usize::try_from(len)
            .ok()
            .filter(|&n| n <= MAX_STRING)
            .ok_or_else(|| ArchiveError::Format(format!("a string of {len} bytes")))?;
        let mut bytes = Vec::with_capacity(len.min(BUFFER));
        while bytes.len() < len {
            self.take(len - bytes.len(), &mut bytes).await?;
        }
        String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| ArchiveError::Format("a string that is not UTF-8".into()))
    }

    /// Appends at most `n` (> 0) bytes to `out`, at least one; returns how
    /// many.
    async fn take(&mut self, n: usize, out: &mut Vec<u8>) -> Result<usize> {
        if self.start == self.end {
            self.need(1).await?;
        }
        let took = n.min(self.end - self.start);
        out.extend_from_slice(&self.buf[self.start..self.start + took]);
        self.start += took;
        Ok(took)
    }
}

/// An int: a sign byte, then the magnitude, least significant byte
/// first.
fn decode_int(bytes: &[u8]) -> Result<i64> {
    let magnitude = bytes[1..]
        .iter()
        .rev()
        .fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
    let value = i64::try_from(magnitude)
        .map_err(|_| ArchiveError::Format(format!("integer {magnitude} out of range")))?;
    Ok(if bytes[0] != 0 { -value } else { value })
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::load::tests::Pieces;
    use super::*;
    use proptest::prelude::*;

    /// Writes archives as `pg_dump --format=custom --compress=0` does (to
    /// a pipe: no data offsets), for the tests.
    pub(crate) struct Writer {
        pub(crate) out: Vec<u8>,
        int_size: u8,
    }

    impl Writer {
        pub(crate) fn new(version: (u8, u8, u8), int_size: u8) -> Self {
            let mut w = Self {
                out: b"PGDMP".to_vec(),
                int_size,
            };
            w.out
                .extend([version.0, version.1, version.2, int_size, 8, 1]);
            if version >= (1, 15, 0) {
                w.out.push(0);
            } else {
                w.int(0);
            }
            for v in [1, 2, 3, 4, 5, 126, 0] {
                w.int(v);
            }
            w.string(Some("db"));
            w.string(Some("15.1"));
            w.string(Some("15.1"));
            w
        }

        pub(crate) fn int(&mut self, v: i64) {
            self.out.push(u8::from(v < 0));
            let mut m = v.unsigned_abs();
            for _ in 0..self.int_size {
                self.out.push((m & 0xff) as u8);
                m >>= 8;
            }
        }

        pub(crate) fn string(&mut self, s: Option<&str>) {
            match s {
                None => self.int(-1),
                Some(s) => {
                    self.int(s.len() as i64);
                    self.out.extend_from_slice(s.as_bytes());
                }
            }
        }

        pub(crate) fn toc(&mut self, version: (u8, u8, u8), entries: &[Entry]) {
            self.int(entries.len() as i64);
            for e in entries {
                self.int(e.dump_id);
                self.int(i64::from(e.had_dumper));
                self.string(Some("0"));
                self.string(Some("16384"));
                self.string(e.tag.as_deref());
                self.string(e.desc.as_deref());
                self.int(e.section);
                self.string(e.defn.as_deref());
                self.string(Some(""));
                self.string(e.copy_stmt.as_deref());
                self.string(e.namespace.as_deref());
                self.string(Some(""));
                self.string(Some("heap"));
                if version >= (1, 16, 0) {
                    self.int(114);
                }
                self.string(e.owner.as_deref());
                self.string(Some("false"));
                self.string(Some("12"));
                self.string(Some("13"));
                self.string(None);
                self.out.push(if e.had_dumper { 1 } else { 3 });
                self.out.extend([0; 8]);
            }
        }

        /// A block of `pieces` (each its own chunk), zero-terminated.
        pub(crate) fn data(&mut self, id: i64, pieces: &[Vec<u8>]) {
            self.out.push(BLOCK_DATA);
            self.int(id);
            self.chunks(pieces);
        }

        pub(crate) fn blobs(&mut self, id: i64, blobs: &[(u32, Vec<Vec<u8>>)]) {
            self.out.push(BLOCK_BLOBS);
            self.int(id);
            for (oid, pieces) in blobs {
                self.int(i64::from(*oid));
                self.chunks(pieces);
            }
            self.int(0);
        }

        fn chunks(&mut self, pieces: &[Vec<u8>]) {
            for p in pieces.iter().filter(|p| !p.is_empty()) {
                self.int(p.len() as i64);
                self.out.extend_from_slice(p);
            }
            self.int(0);
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
    }

    /// Everything an archive holds, as read back.
    #[derive(Debug, PartialEq, Eq)]
    enum Read {
        Data(i64, Vec<u8>),
        Blobs(i64, Vec<(u32, Vec<u8>)>),
    }

    async fn read_all<R: AsyncRead + Unpin>(
        archive: &mut Archive<R>,
        want: usize,
    ) -> Result<Vec<Read>> {
        let mut blocks = Vec::new();
        while let Some(block) = archive.next_block().await? {
            match block {
                Block::Data(id) => {
                    let mut data = Vec::new();
                    loop {
                        let more = data.len() + want;
                        if archive.read_data(&mut data, more).await? {
                            break;
                        }
                    }
                    blocks.push(Read::Data(id, data));
                }
                Block::Blobs(id) => {
                    let mut blobs = Vec::new();
                    while let Some(oid) = archive.next_blob().await? {
                        let mut data = Vec::new();
                        while !archive.read_data(&mut data, usize::MAX).await? {}
                        blobs.push((oid, data));
                    }
                    blocks.push(Read::Blobs(id, blobs));
                }
            }
        }
        Ok(blocks)
    }

    fn entry() -> impl Strategy<Value = Entry> {
        let text = proptest::option::of("[a-zA-Zé \"'\\\\;\n]{0,20}");
        (
            0i64..100_000,
            any::<bool>(),
            text.clone(),
            text.clone(),
            1i64..5,
            text.clone(),
            text.clone(),
            text.clone(),
            text,
        )
            .prop_map(
                |(dump_id, had_dumper, tag, desc, section, defn, copy_stmt, namespace, owner)| {
                    Entry {
                        dump_id,
                        had_dumper,
                        tag,
                        desc,
                        section,
                        defn,
                        copy_stmt,
                        namespace,
                        owner,
                    }
                },
            )
    }

    fn bytes() -> impl Strategy<Value = Vec<Vec<u8>>> {
        proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..6)
    }

    proptest! {
        /// What the writer (pg_dump's layout) wrote reads back the same,
        /// whatever the version, integer size and read sizes.
        #[test]
        fn archives_read_back(
            version in prop_oneof![Just((1u8, 14u8, 0u8)), Just((1, 15, 0)), Just((1, 16, 0))],
            int_size in 4u8..=8,
            entries in proptest::collection::vec(entry(), 0..6),
            data in proptest::collection::vec((0i64..1000, bytes()), 0..5),
            blobs in proptest::collection::vec((1u32..u32::MAX, bytes()), 0..4),
            sizes in proptest::collection::vec(1usize..50, 1..6),
            want in 1usize..500,
        ) {
            let mut w = Writer::new(version, int_size);
            w.toc(version, &entries);
            let mut expected = Vec::new();
            for (id, pieces) in &data {
                w.data(*id, pieces);
                expected.push(Read::Data(*id, pieces.concat()));
            }
            if !blobs.is_empty() {
                w.blobs(7, &blobs);
                expected.push(Read::Blobs(
                    7,
                    blobs.iter().map(|(oid, p)| (*oid, p.concat())).collect(),
                ));
            }
            let input = Pieces { data: w.out, at: 0, sizes, next: 0 };
            let (toc, header, read) = runtime().block_on(async {
                let mut archive = Archive::open(input).await.expect("an archive");
                let read = read_all(&mut archive, want).await.expect("its data");
                (archive.toc.clone(), archive.header.clone(), read)
            });
            prop_assert_eq!(header.version, version);
            prop_assert_eq!(header.int_size, int_size);
            prop_assert_eq!(header.database.as_deref(), Some("db"));
            prop_assert_eq!(toc, entries);
            prop_assert_eq!(read, expected);
        }

        /// A truncated archive is an error, never a shorter success.
        #[test]
        fn truncated_archives_are_errors(cut in 0usize..400) {
            let version = (1, 14, 0);
            let mut w = Writer::new(version, 4);
            let e = Entry {
                dump_id: 3,
                had_dumper: true,
                tag: Some("t".into()),
                desc: Some("TABLE DATA".into()),
                section: SECTION_DATA,
                copy_stmt: Some("COPY public.t (a) FROM stdin;\n".into()),
                namespace: Some("public".into()),
                ..Entry::default()
            };
            w.toc(version, &[e]);
            // Between blocks the format cannot tell an end from a cut
            // (the stored digest does): those are whole blocks fewer.
            let mut boundaries = vec![w.out.len()];
            w.data(3, &[b"1\n".to_vec(), b"2\n".to_vec(), b"\\.\n\n\n".to_vec()]);
            boundaries.push(w.out.len());
            w.blobs(4, &[(16384, vec![b"abc".to_vec()])]);
            let cut = cut.min(w.out.len() - 1);
            let mut bytes = w.out;
            bytes.truncate(cut);
            let result = runtime().block_on(async {
                let mut archive = Archive::open(&bytes[..]).await?;
                read_all(&mut archive, 1).await
            });
            match boundaries.iter().position(|&b| b == cut) {
                Some(blocks) => prop_assert_eq!(result.expect("whole blocks").len(), blocks),
                None => prop_assert!(result.is_err(), "cut at {} read as {:?}", cut, result),
            }
        }
    }

    #[test]
    fn other_versions_and_compressed_archives_are_unsupported() {
        let runtime = runtime();
        for (version, compression, expected) in [
            ((1, 13, 0), 0, Some("archive version 1.13-0")),
            ((1, 17, 0), 0, Some("archive version 1.17-0")),
            ((1, 14, 0), 6, Some("compressed archive data (6)")),
            ((1, 15, 0), 1, Some("compressed archive data (1)")),
            ((1, 14, 0), 0, None),
        ] {
            let mut w = Writer::new(version, 4);
            if compression != 0 {
                let at = 11; // the level or algorithm, after magic and sizes
                if version >= (1, 15, 0) {
                    w.out[at] = compression as u8;
                } else {
                    w.out[at + 1] = compression as u8;
                }
            }
            w.toc(version, &[]);
            let archive = runtime
                .block_on(Archive::open(&w.out[..]))
                .expect("a header");
            assert_eq!(archive.unsupported().as_deref(), expected, "{version:?}");
        }
        let error = runtime
            .block_on(Archive::open(&b"PGDMX\x01\x0e\x00\x04\x08\x01"[..]))
            .err()
            .expect("no magic");
        assert!(error.to_string().contains("magic"), "{error}");
    }
}
