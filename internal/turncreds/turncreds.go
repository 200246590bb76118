// Package turncreds mints and checks TURN REST API ephemeral credentials, the
// scheme coturn calls "use-auth-secret" (draft-uberti-behave-turn-rest-00):
//
//	username = "<unix expiry>:<user>"
//	password = base64(HMAC-SHA1(secret, username))
//
// The relay checks them and the signaling server hands them out; both import
// this package so the two can never disagree on the format.
package turncreds

import (
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Credential is one ephemeral TURN credential.
type Credential struct {
	Username string    `json:"username"`
	Password string    `json:"credential"`
	Expires  time.Time `json:"expires"`
}

// Mint returns a credential for user valid for ttl from now, signed with secret.
func Mint(secret []byte, user string, ttl time.Duration, now time.Time) (Credential, error) {
	if len(secret) == 0 {
		return Credential{}, errors.New("turncreds: empty secret")
	}
	if ttl <= 0 {
		return Credential{}, fmt.Errorf("turncreds: ttl must be positive, got %v", ttl)
	}
	if strings.Contains(user, ":") {
		return Credential{}, fmt.Errorf("turncreds: user name %q must not contain ':'", user)
	}
	exp := now.Add(ttl).Truncate(time.Second)
	username := strconv.FormatInt(exp.Unix(), 10)
	if user != "" {
		username += ":" + user
	}
	return Credential{Username: username, Password: Password(secret, username), Expires: exp}, nil
}

// Password is base64(HMAC-SHA1(secret, username)).
func Password(secret []byte, username string) string {
	m := hmac.New(sha1.New, secret)
	m.Write([]byte(username))
	return base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// ErrExpired is returned by ParseUsername for a credential past its expiry.
var ErrExpired = errors.New("turncreds: credential expired")

// ParseUsername splits a REST username into expiry and user, and checks expiry
// against now. A username that is not of the REST form returns an error that
// is not ErrExpired.
func ParseUsername(username string, now time.Time) (expiry time.Time, user string, err error) {
	ts, user, _ := strings.Cut(username, ":")
	sec, perr := strconv.ParseInt(ts, 10, 64)
	if perr != nil || sec <= 0 {
		return time.Time{}, "", fmt.Errorf("turncreds: username %q is not <expiry>:<user>", username)
	}
	expiry = time.Unix(sec, 0)
	if !now.Before(expiry) {
		return expiry, user, ErrExpired
	}
	return expiry, user, nil
}
