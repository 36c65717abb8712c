-- What enrich derived for the event (device, acquisition, geo, bot: schemas/enriched.ts), as the
-- funnel step reads it through `$`-properties: a funnel backfill reads events beyond the streams'
-- retention from this table (docs/funnels.md, "Backfill"). NULL for rows stored before this column
-- existed (and for events enrich derived nothing for): such a row matches no `$`-property filter
-- and is not known as a bot, as an enriched message without context.
ALTER TABLE events ADD COLUMN IF NOT EXISTS enrichment jsonb;
