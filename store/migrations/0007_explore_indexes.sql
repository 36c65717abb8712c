-- Indexes for the exploration queries (store/explore.ts), sized on make bench-explore:
-- 1,000,000 profiles, 10,000,000 profile_event_days rows, 20,000,000 events.

-- Behavioural filters ("did click_event1 at least 2 times in the last 30 days") read
-- (project, name, day) ranges of ~300,000 rows spread over the whole table: fetched from the heap
-- that took 4 s, 277,000 random page reads. With canonical_id and count in the index it is an
-- index-only scan (~3,000 pages). Same key as profile_event_days_by_name, which it replaces.
CREATE INDEX IF NOT EXISTS profile_event_days_by_name_covering ON profile_event_days (project, name, day) INCLUDE (canonical_id, count);
DROP INDEX IF EXISTS profile_event_days_by_name;

-- Counts filtered by an acquisition-month range (a cohort window) grouped by the common
-- low-cardinality dimensions, without a heap fetch per user (475,000 of them for six months).
-- Same key and predicate as profiles_by_month, which it replaces.
CREATE INDEX IF NOT EXISTS profiles_by_month_covering ON profiles (project, acquisition_month)
  INCLUDE (country, device_type, acquisition_channel, engagement_level) WHERE merged_into IS NULL;
DROP INDEX IF EXISTS profiles_by_month;

-- Country, and country with device, as filters: 47,000 German mobile users instead of a scan of
-- every profile (600 ms -> 9 ms).
CREATE INDEX IF NOT EXISTS profiles_by_country_device ON profiles (project, country, device_type)
  INCLUDE (acquisition_channel, acquisition_month, engagement_level) WHERE merged_into IS NULL;
