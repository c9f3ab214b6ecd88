-- How a tool's runs are isolated: 'warm' (a process kept for this tool version) or
-- 'strict' (a fresh process for every run).
ALTER TABLE tool_versions ADD COLUMN isolation TEXT NOT NULL DEFAULT 'warm';
