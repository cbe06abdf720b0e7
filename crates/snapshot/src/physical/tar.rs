//! Watching `pg_basebackup`'s tar stream go by, to keep what the manifest
//! must record without reading the stream twice: the `backup_label` member
//! (start position, timeline) and the end of `backup_manifest` (its
//! `WAL-Ranges`: the stop position).

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, ReadBuf};

const BLOCK: usize = 512;
/// `backup_label` is a few hundred bytes; more is not a label.
const MAX_LABEL: usize = 64 * 1024;
/// The `WAL-Ranges` section sits right before the manifest's checksum at
/// its end.
const MANIFEST_TAIL: usize = 64 * 1024;

/// What the scan found.
#[derive(Debug, Default)]
pub(crate) struct Found {
    /// The content of `backup_label`.
    pub(crate) label: Option<Vec<u8>>,
    /// The last bytes of `backup_manifest`.
    pub(crate) manifest_tail: Option<Vec<u8>>,
    /// Whether the end-of-archive marker was seen.
    pub(crate) ended: bool,
    /// Why the stream is not a tar archive, if it is not.
    pub(crate) malformed: Option<String>,
}

#[derive(Debug)]
enum Keep {
    Nothing,
    Label,
    Manifest,
}

#[derive(Debug)]
enum State {
    /// Collecting a 512-byte header.
    Header(Vec<u8>),
    /// Inside a member's data and padding.
    Body { keep: Keep, data: u64, padding: u64 },
    /// After the end marker, or a malformed header: ignore the rest.
    Done,
}

/// A tar archive scanner fed with the archive's bytes in order.
#[derive(Debug)]
pub(crate) struct TarScan {
    state: State,
    zero_blocks: u8,
    found: Found,
}

impl Default for TarScan {
    fn default() -> Self {
        Self {
            state: State::Header(Vec::with_capacity(BLOCK)),
            zero_blocks: 0,
            found: Found::default(),
        }
    }
}

impl TarScan {
    #[cfg(test)]
    pub(crate) fn found(&self) -> &Found {
        &self.found
    }

    pub(crate) fn into_found(self) -> Found {
        self.found
    }

    pub(crate) fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match &mut self.state {
                State::Done => return,
                State::Header(header) => {
                    let take = (BLOCK - header.len()).min(data.len());
                    header.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if header.len() == BLOCK {
                        let header = std::mem::take(header);
                        self.header(&header);
                    }
                }
                State::Body {
                    keep,
                    data: left,
                    padding,
                } => {
                    let in_data = usize::try_from(*left).unwrap_or(usize::MAX).min(data.len());
                    let chunk = &data[..in_data];
                    match keep {
                        Keep::Nothing => {}
                        Keep::Label => {
                            let label = self.found.label.get_or_insert_with(Vec::new);
                            let room = MAX_LABEL.saturating_sub(label.len());
                            label.extend_from_slice(&chunk[..chunk.len().min(room)]);
                        }
                        Keep::Manifest => {
                            let tail = self.found.manifest_tail.get_or_insert_with(Vec::new);
                            tail.extend_from_slice(chunk);
                            if tail.len() > 2 * MANIFEST_TAIL {
                                tail.drain(..tail.len() - MANIFEST_TAIL);
                            }
                        }
                    }
                    *left -= in_data as u64;
                    data = &data[in_data..];
                    let in_padding = usize::try_from(*padding)
                        .unwrap_or(usize::MAX)
                        .min(data.len());
                    if *left == 0 {
                        *padding -= in_padding as u64;
                        data = &data[in_padding..];
                        if *padding == 0 {
                            if let Some(tail) = &mut self.found.manifest_tail
                                && tail.len() > MANIFEST_TAIL
                            {
                                tail.drain(..tail.len() - MANIFEST_TAIL);
                            }
                            self.state = State::Header(Vec::with_capacity(BLOCK));
                        }
                    }
                }
            }
        }
    }

    fn header(&mut self, header: &[u8]) {
        if header.iter().all(|&b| b == 0) {
            self.zero_blocks += 1;
            if self.zero_blocks == 2 {
                self.found.ended = true;
                self.state = State::Done;
            } else {
                self.state = State::Header(Vec::with_capacity(BLOCK));
            }
            return;
        }
        self.zero_blocks = 0;
        let malformed = |this: &mut Self, reason: &str| {
            this.found.malformed = Some(reason.to_owned());
            this.state = State::Done;
        };
        let Some(checksum) = octal(&header[148..156]) else {
            return malformed(self, "a tar header has no checksum");
        };
        let sum: u64 = header
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u64::from(b)
                }
            })
            .sum();
        if sum != checksum {
            return malformed(self, "a tar header's checksum does not match");
        }
        let Some(size) = size(&header[124..136]) else {
            return malformed(self, "a tar header has an unreadable size");
        };
        let name_end = header[..100].iter().position(|&b| b == 0).unwrap_or(100);
        let name = &header[..name_end];
        let regular = matches!(header[156], b'0' | 0);
        let keep = match (regular, name) {
            (true, b"backup_label") => {
                self.found.label = Some(Vec::new());
                Keep::Label
            }
            (true, b"backup_manifest") => {
                self.found.manifest_tail = Some(Vec::new());
                Keep::Manifest
            }
            _ => Keep::Nothing,
        };
        let padding = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
        self.state = if size == 0 {
            State::Header(Vec::with_capacity(BLOCK))
        } else {
            State::Body {
                keep,
                data: size,
                padding,
            }
        };
    }
}

/// An octal field (NUL- or space-terminated).
fn octal(field: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(field).ok()?;
    let text = text.trim_matches(|c| c == '\0' || c == ' ');
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

/// A size field: octal, or base-256 (high bit set) for large members.
fn size(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 != 0 {
        let mut value = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            value = value.checked_mul(256)? | u64::from(b);
        }
        Some(value)
    } else {
        octal(field)
    }
}

/// A reader that feeds everything read through it to a [`TarScan`].
pub(crate) struct Scanned<R> {
    inner: R,
    scan: TarScan,
}

impl<R> Scanned<R> {
    pub(crate) fn new(inner: R) -> Self {
        Self {
            inner,
            scan: TarScan::default(),
        }
    }

    pub(crate) fn into_found(self) -> Found {
        self.scan.into_found()
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Scanned<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let this = &mut *self;
        this.scan.feed(&buf.filled()[before..]);
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A ustar header for a regular file (`'0'`) or directory (`'5'`).
    fn header(name: &str, size: u64, kind: u8) -> Vec<u8> {
        let mut h = vec![0u8; BLOCK];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..107].copy_from_slice(b"0000600");
        h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
        h[156] = kind;
        h[257..263].copy_from_slice(b"ustar\0");
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        h
    }

    fn member(out: &mut Vec<u8>, name: &str, data: &[u8]) {
        out.extend(header(name, data.len() as u64, b'0'));
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
    }

    fn archive(manifest: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        member(&mut out, "backup_label", b"START WAL LOCATION: 0/2000028\n");
        out.extend(header("base/", 0, b'5'));
        member(&mut out, "base/1/1259", &vec![7u8; 20_000]);
        member(&mut out, "global/backup_label", b"not the label");
        member(&mut out, "backup_manifest", manifest);
        out.extend(vec![0u8; 2 * BLOCK]);
        out
    }

    #[test]
    fn finds_the_label_and_the_manifest_tail_in_any_chunking() {
        let manifest: Vec<u8> = (0..200_000u32)
            .flat_map(|i| format!("{i},").into_bytes())
            .chain(b"\"WAL-Ranges\": []}".iter().copied())
            .collect();
        let tar = archive(&manifest);
        for chunk in [1, 7, 511, 512, 513, 4096, tar.len()] {
            let mut scan = TarScan::default();
            for piece in tar.chunks(chunk) {
                scan.feed(piece);
            }
            let found = scan.into_found();
            assert!(found.ended && found.malformed.is_none(), "{chunk}");
            assert_eq!(
                found.label.as_deref(),
                Some(&b"START WAL LOCATION: 0/2000028\n"[..])
            );
            let tail = found.manifest_tail.unwrap();
            assert!(tail.len() <= MANIFEST_TAIL && tail.len() >= MANIFEST_TAIL / 2);
            assert!(manifest.ends_with(&tail), "{chunk}");
        }
    }

    #[test]
    fn system_tar_output_is_understood() {
        // GNU tar's own archive of a label and a manifest.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("backup_label"), "label\n").unwrap();
        std::fs::write(dir.path().join("backup_manifest"), "{\"x\": 1}\n").unwrap();
        let Ok(out) = std::process::Command::new("tar")
            .args([
                "--format=ustar",
                "-cf",
                "-",
                "backup_label",
                "backup_manifest",
            ])
            .current_dir(dir.path())
            .output()
        else {
            return;
        };
        let mut scan = TarScan::default();
        scan.feed(&out.stdout);
        let found = scan.into_found();
        assert!(found.ended, "{found:?}");
        assert_eq!(found.label.as_deref(), Some(&b"label\n"[..]));
        assert_eq!(found.manifest_tail.as_deref(), Some(&b"{\"x\": 1}\n"[..]));
    }

    #[test]
    fn garbage_is_not_a_tar() {
        let mut scan = TarScan::default();
        scan.feed(&[b'x'; 2048]);
        assert!(scan.found().malformed.is_some());
        assert!(!scan.found().ended);
    }
}
