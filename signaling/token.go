package signaling

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Join tokens let a game backend admit a player without giving it an API key.
// The backend shares a secret with the server (join-token-secrets) and mints
//
//	"rzv1." + base64url(claims JSON) + "." + base64url(HMAC-SHA256(secret, "rzv1." + base64url(claims JSON)))
//
// where claims is {"exp": unix seconds, "room": "...", "name": "..."}; room and
// name are optional. No padding in the base64url parts.
const joinTokenPrefix = "rzv1."

// JoinClaims are the claims of a join token.
type JoinClaims struct {
	// Expires is when the token stops admitting new connections (required).
	Expires int64 `json:"exp"`
	// IssuedAt is informational.
	IssuedAt int64 `json:"iat,omitempty"`
	// Room, when set, restricts the peer to the room with this id (join, or
	// create_room with this id).
	Room string `json:"room,omitempty"`
	// Name, when set, is the only display name the peer may register with.
	Name string `json:"name,omitempty"`
	// Subject is the backend's user id, for logs.
	Subject string `json:"sub,omitempty"`
}

// MintJoinToken signs claims with secret. If claims.Expires is zero the token
// expires ttl after now.
func MintJoinToken(secret []byte, claims JoinClaims, ttl time.Duration, now time.Time) (string, error) {
	if len(secret) == 0 {
		return "", errors.New("signaling: empty join-token secret")
	}
	if claims.Expires == 0 {
		if ttl <= 0 {
			return "", fmt.Errorf("signaling: join token ttl must be positive, got %v", ttl)
		}
		claims.Expires = now.Add(ttl).Unix()
	}
	if claims.IssuedAt == 0 {
		claims.IssuedAt = now.Unix()
	}
	body, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}
	signed := joinTokenPrefix + base64.RawURLEncoding.EncodeToString(body)
	return signed + "." + base64.RawURLEncoding.EncodeToString(joinTokenMAC(secret, signed)), nil
}

func joinTokenMAC(secret []byte, signed string) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(signed))
	return m.Sum(nil)
}

var (
	errTokenExpired   = errors.New("join token expired")
	errTokenMalformed = errors.New("join token malformed")
	errTokenSignature = errors.New("join token signature does not match any join-token secret")
)

// VerifyJoinToken checks tok against every secret and its expiry.
func VerifyJoinToken(secrets [][]byte, tok string, now time.Time) (JoinClaims, error) {
	var c JoinClaims
	if !strings.HasPrefix(tok, joinTokenPrefix) {
		return c, errTokenMalformed
	}
	dot := strings.LastIndexByte(tok, '.')
	if dot <= len(joinTokenPrefix) {
		return c, errTokenMalformed
	}
	signed, sigPart := tok[:dot], tok[dot+1:]
	sig, err := base64.RawURLEncoding.DecodeString(sigPart)
	if err != nil {
		return c, errTokenMalformed
	}
	ok := false
	for _, s := range secrets {
		if hmac.Equal(sig, joinTokenMAC(s, signed)) {
			ok = true
			break
		}
	}
	if !ok {
		return c, errTokenSignature
	}
	body, err := base64.RawURLEncoding.DecodeString(signed[len(joinTokenPrefix):])
	if err != nil {
		return c, errTokenMalformed
	}
	if err := json.Unmarshal(body, &c); err != nil || c.Expires == 0 {
		return c, errTokenMalformed
	}
	if now.Unix() >= c.Expires {
		return c, errTokenExpired
	}
	return c, nil
}
