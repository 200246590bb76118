package punch

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"errors"
	"fmt"
	"math/big"
	"time"
)

// PublicKey is a peer's ed25519 public key: what signaling hands out, what
// probes are signed with, and what the QUIC handshake pins.
type PublicKey [ed25519.PublicKeySize]byte

// String is the key in unpadded base64url, as it travels in signaling JSON.
func (k PublicKey) String() string { return base64.RawURLEncoding.EncodeToString(k[:]) }

// ParsePublicKey reads a key printed by String.
func ParsePublicKey(s string) (PublicKey, error) {
	var k PublicKey
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) != len(k) {
		return k, fmt.Errorf("punch: %q is not a base64url ed25519 public key", s)
	}
	copy(k[:], b)
	return k, nil
}

// Less orders keys; the lesser key dials the QUIC session.
func (k PublicKey) Less(o PublicKey) bool {
	for i := range k {
		if k[i] != o[i] {
			return k[i] < o[i]
		}
	}
	return false
}

// Identity is a peer's key pair and the self-signed certificate that carries
// it in the QUIC (TLS 1.3) handshake. The private key never leaves the peer.
type Identity struct {
	private ed25519.PrivateKey
	public  PublicKey
	cert    tls.Certificate
}

// NewIdentity generates a fresh identity.
func NewIdentity() (*Identity, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	return IdentityFromKey(priv)
}

// IdentityFromKey wraps an existing ed25519 private key (e.g. one a game keeps).
func IdentityFromKey(priv ed25519.PrivateKey) (*Identity, error) {
	if len(priv) != ed25519.PrivateKeySize {
		return nil, errors.New("punch: not an ed25519 private key")
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "rendezvous peer"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(10 * 365 * 24 * time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, priv.Public(), priv)
	if err != nil {
		return nil, err
	}
	id := &Identity{private: priv, cert: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv}}
	copy(id.public[:], priv.Public().(ed25519.PublicKey))
	return id, nil
}

// PublicKey is what this peer publishes through signaling.
func (id *Identity) PublicKey() PublicKey { return id.public }

// certKey extracts the ed25519 key from a peer's leaf certificate.
func certKey(certs []*x509.Certificate) (PublicKey, error) {
	var k PublicKey
	if len(certs) == 0 {
		return k, errors.New("peer sent no certificate")
	}
	pub, ok := certs[0].PublicKey.(ed25519.PublicKey)
	if !ok || len(pub) != len(k) {
		return k, errors.New("peer certificate is not an ed25519 key")
	}
	copy(k[:], pub)
	return k, nil
}

// keyEqual compares keys in constant time.
func keyEqual(a, b PublicKey) bool { return subtle.ConstantTimeCompare(a[:], b[:]) == 1 }

const alpn = "rendezvous-p2p/1"

// tlsConfig pins the peer: the handshake fails unless the peer proves the key
// accept() approves. Certificates are self-signed; the key is the identity.
func (id *Identity) tlsConfig(accept func(PublicKey) error) *tls.Config {
	verify := func(cs tls.ConnectionState) error {
		k, err := certKey(cs.PeerCertificates)
		if err != nil {
			return err
		}
		return accept(k)
	}
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		Certificates:       []tls.Certificate{id.cert},
		NextProtos:         []string{alpn},
		ClientAuth:         tls.RequireAnyClientCert,
		InsecureSkipVerify: true, // no CA: VerifyConnection pins the key instead
		VerifyConnection:   verify,
		ServerName:         "rendezvous-peer",
	}
}
