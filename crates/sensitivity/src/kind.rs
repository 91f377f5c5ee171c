//! What a finding is: one variant per detector, each with a stable snake_case name and a default level.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::level::Level;

/// The kind of a finding. Its name (`as_str`) is stable: configuration, logs and metrics use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "&'static str")]
#[repr(u8)]
pub enum Kind {
    /// A payment card number (PAN): known issuer prefix, length and Luhn check digit.
    PaymentCard,
    /// An international bank account number with a valid mod-97 check.
    Iban,
    /// A US social security number (`AAA-GG-SSSS`).
    UsSsn,
    /// A UK National Insurance number (`AB123456C`).
    UkNino,
    /// A Spanish DNI or NIE with its check letter.
    EsDni,
    /// An e-mail address.
    Email,
    /// A telephone number: E.164 (`+44 20 7946 0958`) or North American (`(415) 555-2671`).
    Phone,
    /// An IPv4 or IPv6 address.
    IpAddress,
    /// A PEM private key block, or only its header.
    PrivateKey,
    /// An AWS access key id (`AKIA...`).
    AwsAccessKey,
    /// An AWS secret access key assigned to an AWS secret name.
    AwsSecretKey,
    /// A GitHub token (classic or fine-grained).
    GithubToken,
    /// A GitLab personal access token.
    GitlabToken,
    /// A Slack token (`xoxb-...`).
    SlackToken,
    /// A Slack incoming webhook URL.
    SlackWebhook,
    /// A Stripe secret or restricted key.
    StripeKey,
    /// An OpenAI-style API key (`sk-...`, `sk-proj-...`).
    OpenaiKey,
    /// A Google API key (`AIza...`).
    GoogleApiKey,
    /// A JSON Web Token.
    Jwt,
    /// A high-entropy value assigned to a key-like name, or a password in a URL.
    GenericSecret,
    /// A word from a tenant's keyword list.
    Keyword,
    /// A match of a tenant's regular expression.
    CustomPattern,
    /// A person's name (given name, surname or both), found by the personal-data model.
    PersonName,
    /// A postal address: the building number, street, unit, city, state and postcode the personal-data
    /// model found next to each other, as one finding.
    PostalAddress,
    /// A date written next to a birth cue ("DOB", "born", "date of birth", "geb.", "né le", ...).
    DateOfBirth,
    /// A condition, diagnosis, treatment or medication from the health vocabulary.
    Health,
    /// A term from a special category of data protection law (GDPR articles 9 and 10: sexual
    /// orientation, sex life, religion, politics, ethnic origin, trade-union membership, genetic and
    /// biometric data, criminal convictions); the finding's `rule` names the category.
    SpecialCategory,
    /// A passport number, found by the personal-data model.
    Passport,
    /// A driver's licence number, found by the personal-data model.
    DriversLicense,
    /// A tax identification number, found by the personal-data model.
    TaxId,
    /// A bank account number, found by the personal-data model.
    BankAccount,
    /// A bank routing number, found by the personal-data model.
    RoutingNumber,
    /// Another government identifier, found by the personal-data model.
    GovernmentId,
    /// An API key or token of a vendor in the credential rules (`data/credentials.yaml`) without a kind
    /// of its own; the finding's `rule` names the format (`anthropic-api-key`, `twilio-credential`).
    ApiToken,
    /// Something written where a credential goes that is not one: a vendor's documented example key,
    /// `xxxx`, `<your-api-key>`, one character repeated. Reported so that it is visible, at a low level.
    CredentialPlaceholder,
    /// A loopback or unspecified IP address (`127.0.0.1`, `::1`, `0.0.0.0`): an address, but no host's.
    LocalAddress,
}

impl Kind {
    /// Every kind, in the order of the enum.
    pub const ALL: [Kind; 36] = [
        Self::PaymentCard,
        Self::Iban,
        Self::UsSsn,
        Self::UkNino,
        Self::EsDni,
        Self::Email,
        Self::Phone,
        Self::IpAddress,
        Self::PrivateKey,
        Self::AwsAccessKey,
        Self::AwsSecretKey,
        Self::GithubToken,
        Self::GitlabToken,
        Self::SlackToken,
        Self::SlackWebhook,
        Self::StripeKey,
        Self::OpenaiKey,
        Self::GoogleApiKey,
        Self::Jwt,
        Self::GenericSecret,
        Self::Keyword,
        Self::CustomPattern,
        Self::PersonName,
        Self::PostalAddress,
        Self::DateOfBirth,
        Self::Health,
        Self::SpecialCategory,
        Self::Passport,
        Self::DriversLicense,
        Self::TaxId,
        Self::BankAccount,
        Self::RoutingNumber,
        Self::GovernmentId,
        Self::ApiToken,
        Self::CredentialPlaceholder,
        Self::LocalAddress,
    ];

    /// The kinds only the personal-data model finds (the scanner merges them in with
    /// [`crate::Scanner::merge`]).
    pub const MODEL: [Kind; 8] = [
        Self::PersonName,
        Self::PostalAddress,
        Self::Passport,
        Self::DriversLicense,
        Self::TaxId,
        Self::BankAccount,
        Self::RoutingNumber,
        Self::GovernmentId,
    ];

    /// The stable snake_case name (`"payment_card"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PaymentCard => "payment_card",
            Self::Iban => "iban",
            Self::UsSsn => "us_ssn",
            Self::UkNino => "uk_nino",
            Self::EsDni => "es_dni",
            Self::Email => "email",
            Self::Phone => "phone",
            Self::IpAddress => "ip_address",
            Self::PrivateKey => "private_key",
            Self::AwsAccessKey => "aws_access_key",
            Self::AwsSecretKey => "aws_secret_key",
            Self::GithubToken => "github_token",
            Self::GitlabToken => "gitlab_token",
            Self::SlackToken => "slack_token",
            Self::SlackWebhook => "slack_webhook",
            Self::StripeKey => "stripe_key",
            Self::OpenaiKey => "openai_key",
            Self::GoogleApiKey => "google_api_key",
            Self::Jwt => "jwt",
            Self::GenericSecret => "generic_secret",
            Self::Keyword => "keyword",
            Self::CustomPattern => "custom_pattern",
            Self::PersonName => "person_name",
            Self::PostalAddress => "postal_address",
            Self::DateOfBirth => "date_of_birth",
            Self::Health => "health",
            Self::SpecialCategory => "special_category",
            Self::Passport => "passport",
            Self::DriversLicense => "drivers_license",
            Self::TaxId => "tax_id",
            Self::BankAccount => "bank_account",
            Self::RoutingNumber => "routing_number",
            Self::GovernmentId => "government_id",
            Self::ApiToken => "api_token",
            Self::CredentialPlaceholder => "credential_placeholder",
            Self::LocalAddress => "local_address",
        }
    }

    /// The level a finding of this kind has unless configuration says otherwise: credentials, keys,
    /// payment cards, bank accounts and national and travel identifiers are restricted; contact data
    /// (e-mail, phone, IP address) is confidential; a name, an address, a date of birth, a health or a
    /// special-category term, a credential placeholder and a loopback address alone are internal (so "Who was Abraham Lincoln?" may still go to the
    /// cloud), and together they are restricted through the scanner's combinations
    /// ([`crate::Combination::defaults`]). Keywords and custom patterns take the level of their list.
    pub fn default_level(self) -> Level {
        match self {
            Self::Email | Self::Phone | Self::IpAddress => Level::Confidential,
            Self::PersonName
            | Self::PostalAddress
            | Self::DateOfBirth
            | Self::Health
            | Self::SpecialCategory
            | Self::CredentialPlaceholder
            | Self::LocalAddress => Level::Internal,
            _ => Level::Restricted,
        }
    }

    /// Whether this kind is a credential: a key, token, password or secret that grants access.
    pub fn is_credential(self) -> bool {
        matches!(
            self,
            Self::PrivateKey
                | Self::AwsAccessKey
                | Self::AwsSecretKey
                | Self::GithubToken
                | Self::GitlabToken
                | Self::SlackToken
                | Self::SlackWebhook
                | Self::StripeKey
                | Self::OpenaiKey
                | Self::GoogleApiKey
                | Self::Jwt
                | Self::GenericSecret
                | Self::ApiToken
        )
    }

    /// Whether only the personal-data model finds this kind.
    pub fn is_model(self) -> bool {
        Self::MODEL.contains(&self)
    }

    /// Whether the level comes from a tenant list (keywords, custom patterns) rather than from the kind.
    pub fn is_tenant_rule(self) -> bool {
        matches!(self, Self::Keyword | Self::CustomPattern)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not a finding kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a finding kind (for example payment_card, email, generic_secret)")]
pub struct UnknownKind(pub String);

impl FromStr for Kind {
    type Err = UnknownKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s.trim())
            .ok_or_else(|| UnknownKind(s.to_owned()))
    }
}

impl TryFrom<String> for Kind {
    type Error = UnknownKind;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Kind> for &'static str {
    fn from(kind: Kind) -> Self {
        kind.as_str()
    }
}

/// A set of kinds as a bit mask: which detectors are on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct KindSet(u64);

impl KindSet {
    pub(crate) fn all() -> Self {
        Self(Kind::ALL.iter().fold(0, |m, &k| m | Self::bit(k)))
    }

    fn bit(kind: Kind) -> u64 {
        1 << (kind as u32)
    }

    pub(crate) fn has(self, kind: Kind) -> bool {
        self.0 & Self::bit(kind) != 0
    }

    pub(crate) fn has_any(self, kinds: &[Kind]) -> bool {
        kinds.iter().any(|&k| self.has(k))
    }

    pub(crate) fn insert(&mut self, kind: Kind) {
        self.0 |= Self::bit(kind);
    }

    pub(crate) fn remove(&mut self, kind: Kind) {
        self.0 &= !Self::bit(kind);
    }

    pub(crate) fn iter(self) -> impl Iterator<Item = Kind> {
        Kind::ALL.into_iter().filter(move |&k| self.has(k))
    }
}
