//! Syncs the server will ignore because it is in copy-in mode.
//!
//! A server in copy-in mode (after the Execute or Query of a `COPY ... FROM STDIN`) ignores Sync and
//! Flush until CopyDone or CopyFail, so those Syncs get no ReadyForQuery. Drivers send them: tokio-postgres
//! sends Bind, Execute, Sync before its copy data and a second Sync after CopyDone. The client sends that
//! first Sync before it learns that a copy started, so whoever counts replies must take it back when the
//! server's CopyInResponse arrives. Sans-IO: one instance sees every client frame and every CopyInResponse.

/// Counts the Syncs sent since the latest Execute or Query that a CopyInResponse would make void.
#[derive(Debug, Default, Clone, Copy)]
pub struct CopyInSyncs {
    /// No CopyDone or CopyFail since the latest Execute or Query: a copy it starts is still open.
    open: bool,
    /// Syncs counted since then, which the server ignores if that message started a copy.
    counted: u32,
    /// The server is in copy-in mode: further Syncs are ignored until CopyDone or CopyFail.
    copying: bool,
}

impl CopyInSyncs {
    /// Notes a client frame; returns false for a Sync the server will ignore (it owes no reply).
    pub fn on_client(&mut self, tag: u8) -> bool {
        match tag {
            b'E' | b'Q' => {
                *self = Self {
                    open: true,
                    ..Self::default()
                }
            }
            // The copy ends here; Syncs counted before it stay void if the copy did start.
            b'c' | b'f' => {
                self.open = false;
                self.copying = false;
            }
            b'S' if self.copying => return false,
            b'S' if self.open => self.counted += 1,
            _ => {}
        }
        true
    }

    /// The server sent CopyInResponse: returns how many Syncs already counted it will ignore.
    pub fn on_copy_in(&mut self) -> u32 {
        self.copying = self.open;
        std::mem::take(&mut self.counted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(c: &mut CopyInSyncs, tags: &[u8]) -> Vec<bool> {
        tags.iter().map(|&t| c.on_client(t)).collect()
    }

    #[test]
    fn the_sync_before_the_copy_data_is_taken_back() {
        let mut c = CopyInSyncs::default();
        assert!(feed(&mut c, b"BES").iter().all(|&x| x));
        assert_eq!(c.on_copy_in(), 1);
        assert_eq!(
            feed(&mut c, b"dSdcS"),
            [true, false, true, true, true],
            "a Sync inside the copy is ignored; the one after CopyDone is answered"
        );
    }

    #[test]
    fn a_copy_response_after_copy_done_voids_only_the_syncs_inside_the_copy() {
        let mut c = CopyInSyncs::default();
        feed(&mut c, b"ESdcS");
        assert_eq!(
            c.on_copy_in(),
            1,
            "the Sync before CopyDone, not the one after"
        );
        assert!(c.on_client(b'S'));
    }

    #[test]
    fn syncs_without_a_copy_are_all_answered() {
        let mut c = CopyInSyncs::default();
        assert!(feed(&mut c, b"PBESQSS").iter().all(|&x| x));
    }
}
