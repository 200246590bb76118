package relay

import (
	"crypto/md5" //nolint:gosec // RFC 8489 long-term credential key is MD5(user:realm:pass)
	"errors"
	"net/netip"
	"sync"
	"time"

	"github.com/pion/stun/v4"
	"golang.org/x/time/rate"

	"github.com/rendezvous-p2p/rendezvous/internal/turncreds"
)

// credentials is the immutable set of accepted credentials; Reload swaps it.
type credentials struct {
	realm   string
	users   map[string][]byte // name → long-term key MD5(name:realm:password)
	secrets [][]byte          // TURN REST secrets, newest first
}

func newCredentials(cfg Config) *credentials {
	c := &credentials{realm: cfg.Realm, users: make(map[string][]byte, len(cfg.Users))}
	for name, pw := range cfg.Users {
		c.users[name] = longTermKey(name, cfg.Realm, pw)
	}
	for _, s := range cfg.AuthSecrets {
		c.secrets = append(c.secrets, []byte(s))
	}
	return c
}

func longTermKey(user, realm, password string) []byte {
	h := md5.New() //nolint:gosec
	h.Write([]byte(user + ":" + realm + ":" + password))
	return h.Sum(nil)
}

// Auth failure reasons, as metric labels.
const (
	authUnknownUser = "unknown_user"
	authExpired     = "expired"
	authBadPassword = "bad_password"
	authRateLimited = "rate_limited"
)

// candidates returns the user ID an allocation is bound to and every key the
// username may be signed with (one per REST secret), or a refusal reason.
// Static users win over REST names (they cannot contain ':', REST names can).
func (c *credentials) candidates(username string, now time.Time) (userID string, keys [][]byte, reason string) {
	if key, ok := c.users[username]; ok {
		return username, [][]byte{key}, ""
	}
	if len(c.secrets) == 0 {
		return "", nil, authUnknownUser
	}
	_, user, err := turncreds.ParseUsername(username, now)
	switch {
	case errors.Is(err, turncreds.ErrExpired):
		return "", nil, authExpired
	case err != nil:
		return "", nil, authUnknownUser
	}
	keys = make([][]byte, len(c.secrets))
	for i, s := range c.secrets {
		keys[i] = longTermKey(username, c.realm, turncreds.Password(s, username))
	}
	// An allocation is bound to the REST user, not to one credential, so a
	// client that renews its credential keeps its allocation.
	if user == "" {
		user = username
	}
	return "rest:" + user, keys, ""
}

// keyChoice remembers, per client transport address, which of several
// candidate keys signed the request being processed. The socket wrappers see
// the request before pion does and pick the key whose MESSAGE-INTEGRITY
// verifies; pion's AuthHandler, which only gets the username, then returns it.
// Without this, only one REST secret could be live at a time.
type keyChoice struct {
	mu sync.Mutex
	m  map[netip.AddrPort]chosenKey
}

type chosenKey struct {
	username string
	key      []byte
}

const maxKeyChoices = 1 << 16

func (k *keyChoice) put(from netip.AddrPort, username string, key []byte) {
	k.mu.Lock()
	if k.m == nil || len(k.m) >= maxKeyChoices {
		k.m = make(map[netip.AddrPort]chosenKey) // entries are consumed at once; overflow means junk
	}
	k.m[from] = chosenKey{username, key}
	k.mu.Unlock()
}

func (k *keyChoice) take(from netip.AddrPort, username string) []byte {
	k.mu.Lock()
	defer k.mu.Unlock()
	c, ok := k.m[from]
	if !ok || c.username != username {
		return nil
	}
	delete(k.m, from)
	return c.key
}

// observeRequest runs on every authenticated STUN request before pion sees
// it. When the username has several candidate keys it records the one that
// verifies. raw is one complete STUN message.
func (s *Server) observeRequest(raw []byte, from netip.AddrPort) {
	creds := s.creds.Load()
	if len(creds.secrets) < 2 {
		return
	}
	m := &stun.Message{Raw: append([]byte(nil), raw...)}
	if err := m.Decode(); err != nil || !m.Contains(stun.AttrMessageIntegrity) {
		return
	}
	var u stun.Username
	if err := u.GetFrom(m); err != nil {
		return
	}
	_, keys, reason := creds.candidates(u.String(), time.Now())
	if reason != "" || len(keys) < 2 {
		return
	}
	for _, key := range keys {
		if stun.MessageIntegrity(key).Check(m) == nil {
			s.keys.put(from, u.String(), key)
			return
		}
	}
}

// lastKeys remembers the key each client address last authenticated with, so
// an error response pion signed can be re-signed after it is corrected.
type lastKeys struct {
	mu sync.Mutex
	m  map[netip.AddrPort][]byte
}

func (l *lastKeys) put(from netip.AddrPort, key []byte) {
	l.mu.Lock()
	if l.m == nil || len(l.m) >= maxKeyChoices {
		l.m = make(map[netip.AddrPort][]byte) // a rewrite missed after the reset only costs a 401 instead of a 403
	}
	l.m[from] = key
	l.mu.Unlock()
}

func (l *lastKeys) get(from netip.AddrPort) []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.m[from]
}

// failLimiter counts failed authentications per client IP.
type failLimiter struct {
	mu        sync.Mutex
	perMinute int
	m         map[netip.Addr]*rate.Limiter
}

const maxFailTracked = 1 << 16

// blocked reports whether ip has used up its failures.
func (f *failLimiter) blocked(ip netip.Addr, now time.Time) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	l, ok := f.m[ip]
	return ok && f.perMinute > 0 && l.TokensAt(now) < 1
}

// fail records one failure from ip.
func (f *failLimiter) fail(ip netip.Addr, now time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.perMinute <= 0 {
		return
	}
	if f.m == nil {
		f.m = make(map[netip.Addr]*rate.Limiter)
	}
	l, ok := f.m[ip]
	if !ok {
		if len(f.m) >= maxFailTracked {
			// Forget IPs that have recovered; if all are still failing, start over.
			for k, v := range f.m {
				if v.TokensAt(now) >= float64(f.perMinute) {
					delete(f.m, k)
				}
			}
			if len(f.m) >= maxFailTracked {
				f.m = make(map[netip.Addr]*rate.Limiter)
			}
		}
		l = rate.NewLimiter(rate.Limit(float64(f.perMinute)/60), f.perMinute)
		f.m[ip] = l
	}
	l.AllowN(now, 1)
}

func (f *failLimiter) setPerMinute(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if n != f.perMinute {
		f.perMinute = n
		f.m = nil
	}
}
