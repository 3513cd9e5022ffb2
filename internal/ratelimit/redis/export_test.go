package redis

// WaitPauseRefresh waits for the background refreshes of s's pause view
// that Paused started.
func WaitPauseRefresh(s *Store) { s.pauseRefreshes.Wait() }
