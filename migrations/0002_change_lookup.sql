-- Version 2: look up an edit's history (audit, show, restore) without scanning every change.
CREATE INDEX commit_changes_edit ON commit_changes (edit_id);
CREATE INDEX reflog_ref_time ON reflog (ref, time);
