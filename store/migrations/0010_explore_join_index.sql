-- Behavioural filters of the exploration API (store/explore.ts) join the users who qualify (87,000
-- of 1,000,000 in make bench-explore's "click_event1 at least 2 times in 30 days") to their live
-- profiles. A probe of profiles_pkey per user costs a heap fetch each (0.8 s for 87,000); a merge
-- join over this index in canonical_id order reads the live profiles' grouping columns without
-- touching the heap. Included: the dimensions counts most often group by (as in 0007's indexes).
CREATE INDEX IF NOT EXISTS profiles_live_by_id ON profiles (project, canonical_id)
  INCLUDE (engagement_level, acquisition_month, acquisition_channel, country, device_type) WHERE merged_into IS NULL;
