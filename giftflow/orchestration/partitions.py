import dagster as dg

# end_offset=1: today's partition exists, so sensors can ask for it while the day is still running.
daily = dg.DailyPartitionsDefinition(start_date="2024-01-01", end_offset=1, timezone="UTC")
