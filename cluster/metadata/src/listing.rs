//! The delimiter grouping every engine's listing shares: engines fetch rows of live names in
//! ascending order from a start key; [`PageBuilder`] turns them into one page, telling the
//! engine when to jump past a whole common prefix (one range seek) and when the page is done.

use dos_protocol::{ListPage, VersionRecord};

use crate::{ListQuery, MetadataError};

/// What the engine does after offering a row.
pub(crate) enum Step {
    /// Keep reading rows.
    Next,
    /// The rest of this batch is under a prefix already listed: fetch again from `start()`.
    Jump,
    /// The page is complete.
    Done,
}

pub(crate) struct PageBuilder<'q> {
    query: &'q ListQuery,
    limit: usize,
    /// Where the next fetch starts, and whether that key itself is included.
    start: (String, bool),
    page: ListPage,
}

impl<'q> PageBuilder<'q> {
    pub(crate) fn new(query: &'q ListQuery) -> Result<Self, MetadataError> {
        if let Some(d) = query.delimiter
            && (!d.is_ascii() || d == '\u{7f}')
        {
            return Err(MetadataError::BadRequest(
                "delimiter must be one ASCII character".into(),
            ));
        }
        let prefix = query.prefix.as_str();
        let start = match &query.cursor {
            Some(c) if c.as_str() >= prefix => match query.delimiter {
                Some(d) if c.ends_with(d) && c.len() > prefix.len() => (successor(c, d), true),
                _ => (c.clone(), false),
            },
            _ => (prefix.to_string(), true),
        };
        Ok(Self {
            query,
            limit: query.limit.clamp(1, 10_000),
            start,
            page: ListPage::default(),
        })
    }

    /// Where to fetch from: `(key, inclusive)`.
    pub(crate) fn start(&self) -> &(String, bool) {
        &self.start
    }

    /// How many rows the next fetch should ask for (one more than fits, to know if there is
    /// a next page).
    pub(crate) fn batch(&self) -> usize {
        let room = self
            .limit
            .saturating_sub(self.page.entries.len() + self.page.prefixes.len());
        (room + 1).min(1000)
    }

    /// Takes the next row in name order.
    pub(crate) fn offer(&mut self, rec: VersionRecord) -> Step {
        let prefix = self.query.prefix.as_str();
        let name = rec.name.as_str();
        if !name.starts_with(prefix) {
            return Step::Done;
        }
        let rest = &name[prefix.len()..];
        let group = self
            .query
            .delimiter
            .and_then(|d| rest.find(d).map(|p| format!("{prefix}{}", &rest[..=p])));
        if self.page.entries.len() + self.page.prefixes.len() >= self.limit {
            self.page.next_cursor = last_key(&self.page);
            return Step::Done;
        }
        match group {
            Some(g) => {
                // Jump past every name under this prefix.
                let d = self.query.delimiter.unwrap_or('/');
                self.start = (successor(&g, d), true);
                self.page.prefixes.push(g);
                Step::Jump
            }
            None => {
                self.start = (name.to_string(), false);
                self.page.entries.push(rec);
                Step::Next
            }
        }
    }

    /// Takes a name that is not listed (deleted at the listing's moment): the next fetch
    /// starts after it.
    pub(crate) fn skip(&mut self, name: &str) -> Step {
        if !name.starts_with(self.query.prefix.as_str()) {
            return Step::Done;
        }
        self.start = (name.to_string(), false);
        Step::Next
    }

    pub(crate) fn finish(self) -> ListPage {
        self.page
    }
}

/// The rows of a listing at a moment ([`ListQuery::at`]): versions in ascending name order,
/// each name's newest version (made at or before the moment) first. The first row of each
/// name decides it (listed, or skipped when it is a delete marker); the older ones are
/// passed over.
#[derive(Default)]
pub(crate) struct AtRows {
    last: Option<String>,
}

impl AtRows {
    pub(crate) fn offer(&mut self, builder: &mut PageBuilder<'_>, rec: VersionRecord) -> Step {
        if self.last.as_deref() == Some(rec.name.as_str()) {
            return Step::Next;
        }
        self.last = Some(rec.name.as_str().to_string());
        if rec.is_delete_marker() {
            builder.skip(rec.name.as_str())
        } else {
            builder.offer(rec)
        }
    }
}

/// The smallest string greater than every string starting with `group` (which ends with the
/// ASCII delimiter `d`).
fn successor(group: &str, d: char) -> String {
    let mut s = group[..group.len() - d.len_utf8()].to_string();
    s.push((d as u8 + 1) as char);
    s
}

fn last_key(page: &ListPage) -> Option<String> {
    let e = page.entries.last().map(|e| e.name.as_str().to_string());
    let p = page.prefixes.last().cloned();
    match (e, p) {
        (Some(e), Some(p)) => Some(e.max(p)),
        (e, p) => e.or(p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn successors() {
        assert_eq!(successor("d/", '/'), "d0");
        assert!(successor("d/", '/').as_str() > "d/\u{10ffff}");
    }
}
