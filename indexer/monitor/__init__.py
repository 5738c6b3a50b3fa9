"""Live monitoring: standing queries evaluated on every newly committed window of frames, alerts
with clips, webhooks and a server-sent-event feed, exactly once across restarts."""
