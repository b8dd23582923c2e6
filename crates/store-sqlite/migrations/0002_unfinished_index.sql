-- SQLite evaluates a partial index's WHERE on every insert into and update of its table, and
-- it evaluates `x IN (a, b, c)` with three or more values through a temporary B-tree that it
-- builds and frees each time. With the first definition of `runs_unfinished`, every write to a
-- run (several per step) built two. Two values and an OR are evaluated inline. Queries that
-- use this index spell its predicate the same way (`… IN ('queued', 'running') OR … =
-- 'requires_action'`), which is what lets the planner pick it.
DROP INDEX runs_unfinished;
CREATE INDEX runs_unfinished ON runs (session_pk, pk) WHERE status IN ('queued', 'running') OR status = 'requires_action';
