//! Exact outcomes per detector, through the public API.

use super::*;

fn scanner() -> Scanner {
    Scanner::new(&ScannerConfig::default()).unwrap()
}

/// The kind and matched text of every finding, in order.
fn found(text: &str) -> Vec<(Kind, &str)> {
    found_with(&scanner(), text)
}

fn found_with<'t>(scanner: &Scanner, text: &'t str) -> Vec<(Kind, &'t str)> {
    let scan = scanner.scan(text);
    assert!(scan.complete);
    scan.findings
        .iter()
        .map(|f| {
            (
                f.kind,
                text.get(f.range.clone()).expect("range on char boundaries"),
            )
        })
        .collect()
}

/// Only the matched texts of findings of `kind`.
fn of(kind: Kind, text: &str) -> Vec<&str> {
    found(text)
        .into_iter()
        .filter(|(k, _)| *k == kind)
        .map(|(_, t)| t)
        .collect()
}

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const BASE32: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const BASE64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL_SAFE: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const DIGITS: &[u8] = b"0123456789";

/// A deterministic random string, so that no realistic-looking secret sits in the source as a literal.
fn fake(charset: &[u8], len: usize, seed: u64) -> String {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(charset[(x % charset.len() as u64) as usize])
        })
        .collect()
}

fn base64url(data: &[u8]) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |a, (i, &c)| a | (u32::from(c) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(URL_SAFE[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// Standard base64 with `=` padding.
fn base64(data: &[u8]) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |a, (i, &c)| a | (u32::from(c) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(BASE64[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

mod cards {
    use super::*;

    #[test]
    fn test_numbers_with_spaces_and_dashes_are_found() {
        for card in [
            "4111 1111 1111 1111",
            "4111-1111-1111-1111",
            "4111111111111111",
            "4242 4242 4242 4242",
            "5555 5555 5555 4444",
            "5105-1051-0510-5100",
            "2223 0031 2200 3222",
            "3782 822463 10005",
            "371449635398431",
            "6011 1111 1111 1117",
            "3530 1113 3330 0000",
            "3056 9309 0259 04",
            "6200 0000 0000 0005",
        ] {
            let text = format!("Please charge {card}, thanks.");
            assert_eq!(found(&text), [(Kind::PaymentCard, card)], "{card}");
        }
    }

    #[test]
    fn invalid_or_embedded_numbers_are_not_cards() {
        for text in [
            "card 4111 1111 1111 1112",            // Luhn-invalid
            "order number 1234567812345678",       // no issuer starts with 1
            "ref 41111111111111111111",            // 20 digits
            "id_4111111111111111",                 // inside an identifier
            "x4111111111111111",                   // inside a word
            "pi is 3.4111111111111111",            // a decimal fraction
            "4111111111111111abc",                 // followed by letters
            "555-5555-5555-4444-5",                // first group too short
            "totals 4111 11 1111 1111 111",        // Visa with 17 digits
            "const P: u64 = 4488286894823169796;", // a bare 19-digit run is an integer, not a card
        ] {
            assert_eq!(of(Kind::PaymentCard, text), Vec::<&str>::new(), "{text}");
        }
    }

    #[test]
    fn more_issuers() {
        for (issuer, number) in [
            ("UATP", "1230 9721 5134 055"),
            ("Dankort", "5019688126340314"),
            ("Maestro UK", "6759009333037654"),
            ("Maestro, 12 digits", "6759 7980 3433"),
            ("Mir", "2200688126340310"),
            ("Troy", "9792688126340319"),
            ("RuPay", "8184909340662173"),
            ("InterPayment", "6369198057817946"),
        ] {
            assert_eq!(
                found(&format!("card {number} ok")),
                [(Kind::PaymentCard, number)],
                "{issuer}"
            );
        }
        assert_eq!(found("card 123097215134056 ok"), []);
        // Bare, a 15-digit number from 1 or a 12-digit one is as often an id: only grouped is it a card.
        assert_eq!(found("profile.php?id=100004567890125"), []);
        assert_eq!(found("arn:aws:iam::503812345679:root"), []);
        assert_eq!(
            found("card 1230 9721 5134 055 ok"),
            [(Kind::PaymentCard, "1230 9721 5134 055")]
        );
    }

    #[test]
    fn long_cards_are_found_when_grouped() {
        assert_eq!(
            of(Kind::PaymentCard, "card 4488 2868 9482 3169 796"),
            ["4488 2868 9482 3169 796"]
        );
    }

    #[test]
    fn a_card_followed_by_more_groups_is_still_found() {
        assert_eq!(
            of(Kind::PaymentCard, "4111 1111 1111 1111 2031"),
            ["4111 1111 1111 1111"]
        );
        assert_eq!(
            of(Kind::PaymentCard, "qty 12 4111 1111 1111 1111"),
            ["4111 1111 1111 1111"]
        );
    }
}

mod iban {
    use super::*;

    #[test]
    fn registry_examples_are_found() {
        assert_eq!(
            found("IBAN: DE89 3704 0044 0532 0130 00."),
            [(Kind::Iban, "DE89 3704 0044 0532 0130 00")]
        );
        assert_eq!(
            found("pay GB82WEST12345698765432 today"),
            [(Kind::Iban, "GB82WEST12345698765432")]
        );
        assert_eq!(
            of(Kind::Iban, "fr14 2004 1010 0505 0001 3m02 606"),
            ["fr14 2004 1010 0505 0001 3m02 606"]
        );
    }

    #[test]
    fn wrong_check_digits_length_or_country_are_not() {
        for text in [
            "DE88 3704 0044 0532 0130 00",
            "GB82WEST12345698765433",
            "DE89 3704 0044 0532 0130 0",
            "DE89370400440532013000123",
            "QQ89 3704 0044 0532 0130 00",
            "XDE89370400440532013000",
        ] {
            assert_eq!(of(Kind::Iban, text), Vec::<&str>::new(), "{text}");
        }
    }
}

mod national_ids {
    use super::*;

    #[test]
    fn us_ssns() {
        assert_eq!(found("SSN 123-45-6789 on file"), [(Kind::UsSsn, "123-45-6789")]);
        assert_eq!(of(Kind::UsSsn, "ssn: 123 45 6789"), ["123 45 6789"]);
        for text in [
            "000-12-3456",
            "666-12-3456",
            "900-12-3456",
            "999-12-3456",
            "078-05-1120",
            "219-09-9999",
            "123-00-6789",
            "123-45-0000",
            "123456789",
            "123-45 6789",
            "1-123-45-6789",
            "123-45-6789-0",
        ] {
            assert_eq!(found(text), [], "{text}");
        }
    }

    #[test]
    fn us_ssns_in_other_written_forms_after_a_cue() {
        for (text, number) in [
            ("SSN: 123456789", "123456789"),
            ("ssn 123.45.6789", "123.45.6789"),
            ("Social Security number is 123 456 789.", "123 456 789"),
            ("SS# 12-345-6789", "12-345-6789"),
        ] {
            assert_eq!(found(text), [(Kind::UsSsn, number)], "{text}");
        }
        for text in [
            "order 123456789 shipped",
            "SSN: 1234567890",
            "SSN: 000123456",
            "assn 123456789",
            "SSN 12345678",
        ] {
            assert_eq!(found(text), [], "{text}");
        }
    }

    #[test]
    fn uk_national_insurance_numbers_in_other_written_forms() {
        for text in ["ab123456c", "AB 123456 C", "AB 12 34 56 C", "AB123456 C"] {
            assert_eq!(found(&format!("NI: {text}.")), [(Kind::UkNino, text)], "{text}");
        }
        for text in [
            "Ab123456c",
            "qq123456c",
            "ab123456e",
            "Spending grew by 120000 a year",
        ] {
            assert_eq!(found(text), [], "{text}");
        }
    }

    #[test]
    fn uk_national_insurance_numbers() {
        assert_eq!(found("NI number AB123456C."), [(Kind::UkNino, "AB123456C")]);
        assert_eq!(found("NI: JG 10 37 56 A"), [(Kind::UkNino, "JG 10 37 56 A")]);
        for text in [
            "QQ123456C",
            "DA123456A",
            "AO123456A",
            "GB123456A",
            "NK123456B",
            "AB123456E",
            "AB123456",
            "XAB123456C",
        ] {
            assert_eq!(found(text), [], "{text}");
        }
    }

    #[test]
    fn spanish_dni_and_nie() {
        assert_eq!(found("DNI 12345678Z"), [(Kind::EsDni, "12345678Z")]);
        assert_eq!(found("DNI 12345678-z"), [(Kind::EsDni, "12345678-z")]);
        assert_eq!(found("NIE X1234567L"), [(Kind::EsDni, "X1234567L")]);
        assert_eq!(found("DNI 12345678A"), []);
        assert_eq!(found("NIE X1234567A"), []);
        assert_eq!(found("build 20240115T093000"), []);
        // An old DNI without its leading zero, a lower-case NIE, a K/L/M NIF.
        assert_eq!(found("DNI 1234567L"), [(Kind::EsDni, "1234567L")]);
        assert_eq!(found("nie x1234567l"), [(Kind::EsDni, "x1234567l")]);
        assert_eq!(found("NIF K1234567L"), [(Kind::EsDni, "K1234567L")]);
        assert_eq!(found("DNI 1234567A"), []);
    }
}

mod contact {
    use super::*;

    #[test]
    fn emails_in_prose() {
        let text = "Write to jane.doe+sluice@mail.example.co.uk or <ops@example.org>. Thanks!";
        assert_eq!(
            found(text),
            [
                (Kind::Email, "jane.doe+sluice@mail.example.co.uk"),
                (Kind::Email, "ops@example.org")
            ]
        );
    }

    #[test]
    fn internationalised_top_level_domains() {
        assert_eq!(
            found("write to ivan@example.xn--p1ai today"),
            [(Kind::Email, "ivan@example.xn--p1ai")]
        );
    }

    #[test]
    fn things_with_at_signs_that_are_not_emails() {
        for text in [
            "@dataclass\nclass Foo: pass",
            "see icon@2x.png",
            "user@localhost",
            "npm i @types/node",
            "git@github.com:org/repo.git",
            "a@b.c",
            "x@-example.com",
        ] {
            assert_eq!(of(Kind::Email, text), Vec::<&str>::new(), "{text}");
        }
    }

    #[test]
    fn phone_numbers() {
        for phone in [
            "+44 20 7946 0958",
            "+1 (415) 555-2671",
            "+4915112345678",
            "+44 (0)20 7946 0958",
            "(415) 555-2671",
            "(415)555-2671",
            "415-555-2671",
            "415.555.2671",
            "1-800-555-0199",
        ] {
            let text = format!("call {phone} now");
            assert_eq!(found(&text), [(Kind::Phone, phone)], "{phone}");
        }
    }

    #[test]
    fn not_phone_numbers() {
        for text in [
            "112-555-2671",
            "415-155-2671",
            "911-555-1234",
            "(123) 555-2671",
            "+1234567",
            "+0123456789",
            "415-555-26711",
            "x+4915112345678",
            "2024-01-15",
            "+10000-01-01",
            "+999999-12-31 23:59:59",
            "+292277026596-12-04",
        ] {
            assert_eq!(of(Kind::Phone, text), Vec::<&str>::new(), "{text}");
        }
    }

    #[test]
    fn national_formats_without_a_country_code() {
        for number in [
            "020 7946 0958",
            "054-123-4567",
            "0541234567",
            "03-1234-5678",
            "090-1234-5678",
            "138 0013 8000",
            "13800138000",
            "06 12 34 56 78",
            "0412 345 678",
        ] {
            assert_eq!(
                found(&format!("reach me at {number} today")),
                [(Kind::Phone, number)],
                "{number}"
            );
        }
        assert_eq!(found("mobile: 4155552671"), [(Kind::Phone, "4155552671")]);
        for text in [
            "order 4155552671 shipped",
            "Cancelled order 4155552671",
            "loss = 0.7912345678",
            "ISBN 0-201-63361-2",
            "on 01.02.2023 we met",
            "id 0123456789",
            "code 0000000000",
            "ts 1700000000123",
            "version 0.12.3456",
        ] {
            assert_eq!(found(text), [], "{text}");
        }
    }

    #[test]
    fn ip_addresses() {
        assert_eq!(
            found("host 192.168.1.20 is down"),
            [(Kind::IpAddress, "192.168.1.20")]
        );
        assert_eq!(found("ssh 10.0.0.1:22"), [(Kind::IpAddress, "10.0.0.1")]);
        assert_eq!(
            found("at 2001:db8::8a2e:370:7334."),
            [(Kind::IpAddress, "2001:db8::8a2e:370:7334")]
        );
        assert_eq!(
            found("fe80::1ff:fe23:4567:890a%eth0"),
            [(Kind::IpAddress, "fe80::1ff:fe23:4567:890a%eth0")]
        );
        assert_eq!(
            found("full 2001:0db8:85a3:0000:0000:8a2e:0370:7334"),
            [(Kind::IpAddress, "2001:0db8:85a3:0000:0000:8a2e:0370:7334")]
        );
        assert_eq!(
            found("mapped ::ffff:192.0.2.128"),
            [(Kind::IpAddress, "::ffff:192.0.2.128")]
        );
    }

    #[test]
    fn compressed_and_zoned_ipv6_and_local_addresses() {
        assert_eq!(
            found("ping fe80::1%eth0 now"),
            [(Kind::IpAddress, "fe80::1%eth0")]
        );
        assert_eq!(found("route via fd12::7"), [(Kind::IpAddress, "fd12::7")]);
        // Loopback and unspecified addresses are addresses, but no host's: a low level of their own.
        for (text, address) in [
            ("bind ::1 port 80", "::1"),
            ("open 127.0.0.1:3000", "127.0.0.1"),
            ("listen on 0.0.0.0:8080", "0.0.0.0"),
        ] {
            assert_eq!(found(text), [(Kind::LocalAddress, address)], "{text}");
            assert_eq!(scanner().scan(text).level, Level::Internal, "{text}");
        }
        for text in ["ratio 12::30", "std::net::Ipv6Addr", "a::b::c 1"] {
            assert_eq!(found(text), [], "{text}");
        }
    }

    #[test]
    fn versions_and_other_dotted_numbers_are_not_ip_addresses() {
        for text in [
            "version 1.2.3.4",
            "Version: 1.2.3.4",
            "v10.0.0.1",
            "release 4.3.2.1",
            "RFC 5280 section 4.2.1.13",
            "see §4.2.1.3",
            "1.2.3.4.5",
            "127.0.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "999.1.1.1",
            "1.2.3",
            "01.02.03.04",
            "12:30:45",
            "std::net::Ipv6Addr",
            "::1",
            "u32::MAX",
            "sha256:9f86d081884c7d659a2feaa0c55ad015",
            "localhost:8080",
            "00:1a:2b:3c:4d:5e",
        ] {
            assert_eq!(of(Kind::IpAddress, text), Vec::<&str>::new(), "{text}");
        }
    }
}

mod keys {
    use super::*;

    fn header(label: &str) -> String {
        format!("-----{} {label}-----", "BEGIN")
    }

    #[test]
    fn pem_headers_of_every_flavour() {
        for label in [
            "RSA PRIVATE KEY",
            "EC PRIVATE KEY",
            "DSA PRIVATE KEY",
            "OPENSSH PRIVATE KEY",
            "ENCRYPTED PRIVATE KEY",
            "PRIVATE KEY",
            "PGP PRIVATE KEY BLOCK",
        ] {
            let h = header(label);
            let block = format!("{h}\n{}", fake(BASE64, 64, 4));
            let text = format!("here: {block}");
            assert_eq!(found(&text), [(Kind::PrivateKey, block.as_str())], "{label}");
            // A header with no key after it is written where a key goes, but is none.
            let text = format!("files that start with {h} are keys");
            assert_eq!(
                found(&text),
                [(Kind::CredentialPlaceholder, h.as_str())],
                "{label}"
            );
        }
    }

    #[test]
    fn a_key_pasted_onto_one_line_is_covered() {
        let block = format!(
            "{} {} {} -----END RSA PRIVATE KEY-----",
            header("RSA PRIVATE KEY"),
            fake(BASE64, 64, 5),
            fake(BASE64, 20, 6)
        );
        let text = format!("my key is {block} thanks");
        assert_eq!(found(&text), [(Kind::PrivateKey, block.as_str())]);
    }

    #[test]
    fn a_block_encoded_in_base64_as_a_whole_is_a_key() {
        let pem = format!(
            "{}\n{}\n-----END PRIVATE KEY-----\n",
            header("PRIVATE KEY"),
            fake(BASE64, 300, 7)
        );
        let encoded = base64(pem.as_bytes());
        let text = format!("data:\n  tls.key: {encoded}\n");
        assert_eq!(found(&text), [(Kind::PrivateKey, encoded.as_str())]);
        let certificate = base64(format!("{}\n{}\n", header("CERTIFICATE"), fake(BASE64, 300, 7)).as_bytes());
        assert_eq!(found(&format!("tls.crt: {certificate}")), []);
        let header_only = base64(header("RSA PRIVATE KEY").as_bytes());
        assert_eq!(
            found(&format!("x {header_only} y")),
            [(Kind::CredentialPlaceholder, header_only.as_str())]
        );
    }

    #[test]
    fn a_whole_block_is_covered() {
        let body = format!("{}\n{}", fake(BASE64, 64, 1), fake(BASE64, 20, 2));
        let block = format!(
            "{}\n{body}\n-----{} RSA PRIVATE KEY-----",
            header("RSA PRIVATE KEY"),
            "END"
        );
        let text = format!("key:\n{block}\nthat was it");
        assert_eq!(found(&text), [(Kind::PrivateKey, block.as_str())]);
        // JSON-escaped line breaks, as in a tool-call argument.
        let escaped = block.replace('\n', "\\n");
        let json = format!("{{\"key\": \"{escaped}\"}}");
        assert_eq!(found(&json), [(Kind::PrivateKey, escaped.as_str())]);
    }

    #[test]
    fn a_truncated_block_is_covered_as_far_as_it_goes() {
        let start = format!("{}\n{}", header("OPENSSH PRIVATE KEY"), fake(BASE64, 64, 3));
        let text = format!("{start}\nand then the paste ended");
        assert_eq!(found(&text), [(Kind::PrivateKey, start.as_str())]);
    }

    #[test]
    fn public_keys_and_certificates_are_not_private() {
        assert_eq!(found(&header("PUBLIC KEY")), []);
        assert_eq!(found(&header("CERTIFICATE")), []);
        assert_eq!(found("-----begin rsa private key-----"), []);
    }
}

mod credentials {
    use super::*;

    fn alone(kind: Kind, secret: &str) {
        for text in [
            format!("use {secret} here"),
            format!("\"{secret}\""),
            format!("KEY={secret}\n"),
        ] {
            assert_eq!(of(kind, &text), [secret], "{text}");
            assert_eq!(scanner().scan(&text).level, Level::Restricted);
        }
    }

    #[test]
    fn a_token_after_an_escaped_line_break_is_found() {
        let token = format!("ghp_{}", fake(ALNUM, 36, 31));
        let text = format!("{{\"keys\": \"one\\n{token}\"}}");
        assert_eq!(found(&text), [(Kind::GithubToken, token.as_str())]);
    }

    #[test]
    fn a_token_assigned_to_a_secret_name_is_named_after_its_format() {
        let token = format!("ghp_{}", fake(ALNUM, 36, 30));
        for text in [
            format!("GITHUB_TOKEN={token}"),
            format!("{{\"api_key\": \"{token}\"}}"),
        ] {
            assert_eq!(found(&text), [(Kind::GithubToken, token.as_str())], "{text}");
        }
    }

    #[test]
    fn aws_access_key_ids() {
        for prefix in ["AKIA", "ASIA", "ABIA", "ACCA"] {
            alone(Kind::AwsAccessKey, &format!("{prefix}{}", fake(BASE32, 16, 10)));
        }
        assert_eq!(found(&format!("akia{}", fake(BASE32, 16, 10))), []);
        assert_eq!(found(&format!("AKIA{}", fake(BASE32, 15, 10))), []);
        assert_eq!(found(&format!("AKIA{}", fake(BASE32, 17, 10))), []);
        // Placeholders and the documented example key: reported, but not as a key.
        for placeholder in [
            "AKIAAAAAAAAAAAAAAAAA",
            "AKIAIOSFODNN7EXAMPLE",
            "AKIAXXXXXXXXXXXXXXXX",
        ] {
            assert_eq!(found(placeholder), [(Kind::CredentialPlaceholder, placeholder)]);
        }
        // A real id can have low entropy: the format alone is specific enough.
        alone(Kind::AwsAccessKey, "AKIA2E2E2E2E2E2EQQQQ");
    }

    #[test]
    fn aws_secret_keys_need_an_aws_secret_name() {
        let secret = fake(BASE64, 40, 11);
        for text in [
            format!("aws_secret_access_key = {secret}"),
            format!("AWS_SECRET_ACCESS_KEY=\"{secret}\""),
            format!("{{\"awsSecretKey\": \"{secret}\"}}"),
        ] {
            assert_eq!(found(&text), [(Kind::AwsSecretKey, secret.as_str())], "{text}");
        }
        assert_eq!(found(&format!("checksum = {secret}")), []);
        // Another secret name: still a secret, but not an AWS one.
        assert_eq!(
            found(&format!("secret_key = {secret}")),
            [(Kind::GenericSecret, secret.as_str())]
        );
    }

    #[test]
    fn github_tokens() {
        for prefix in ["ghp_", "gho_", "ghu_", "ghs_", "ghr_"] {
            alone(Kind::GithubToken, &format!("{prefix}{}", fake(ALNUM, 36, 12)));
        }
        alone(
            Kind::GithubToken,
            &format!("github_pat_{}_{}", fake(ALNUM, 22, 13), fake(ALNUM, 59, 14)),
        );
        assert_eq!(found(&format!("ghp_{}", fake(ALNUM, 35, 12))), []);
        assert_eq!(found(&format!("xghp_{}", fake(ALNUM, 36, 12))), []);
        let placeholder = format!("ghp_{}", "x".repeat(36));
        assert_eq!(
            found(&placeholder),
            [(Kind::CredentialPlaceholder, placeholder.as_str())]
        );
    }

    #[test]
    fn gitlab_slack_stripe_google() {
        alone(Kind::GitlabToken, &format!("glpat-{}", fake(URL_SAFE, 20, 15)));
        let slack = format!(
            "xoxb-{}-{}-{}",
            fake(DIGITS, 12, 16),
            fake(DIGITS, 13, 17),
            fake(ALNUM, 24, 18)
        );
        alone(Kind::SlackToken, &slack);
        for prefix in ["sk_live_", "rk_live_", "sk_test_"] {
            alone(Kind::StripeKey, &format!("{prefix}{}", fake(ALNUM, 24, 19)));
        }
        alone(Kind::GoogleApiKey, &format!("AIza{}", fake(URL_SAFE, 35, 20)));
        assert_eq!(found(&format!("glpat-{}", fake(URL_SAFE, 19, 15))), []);
        assert_eq!(found("xoxb-not-a-real-token-here"), []);
        assert_eq!(found(&format!("sk_live_{}", fake(ALNUM, 23, 19))), []);
        assert_eq!(found(&format!("AIza{}", fake(URL_SAFE, 34, 20))), []);
    }

    #[test]
    fn slack_webhooks() {
        let url = format!(
            "https://hooks.slack.com/services/T{}/B{}/{}",
            fake(BASE32, 8, 21),
            fake(BASE32, 10, 22),
            fake(ALNUM, 24, 23)
        );
        assert_eq!(
            found(&format!("post to {url} please")),
            [(Kind::SlackWebhook, url.as_str())]
        );
        assert_eq!(found("see https://hooks.slack.com/services/ for docs"), []);
    }

    #[test]
    fn openai_style_keys() {
        // OpenAI's own formats are named after OpenAI; other `sk-` keys are an API token of unknown vendor.
        alone(
            Kind::OpenaiKey,
            &format!("sk-{}T3BlbkFJ{}", fake(ALNUM, 20, 24), fake(ALNUM, 20, 27)),
        );
        alone(Kind::OpenaiKey, &format!("sk-proj-{}", fake(URL_SAFE, 120, 25)));
        alone(Kind::ApiToken, &format!("sk-{}", fake(ALNUM, 48, 24)));
        // Anthropic's keys are Anthropic's, not OpenAI's.
        let anthropic = format!("sk-ant-api03-{}AA", fake(URL_SAFE, 93, 28));
        alone(Kind::ApiToken, &anthropic);
        assert_eq!(
            scanner().scan(&anthropic).findings[0].rule.as_deref(),
            Some("anthropic-api-key")
        );
        for text in [
            "sk-1",
            "sk-12345",
            "sk-learn-metrics-and-evaluation-tools",
            "the risk-averse option",
        ] {
            assert_eq!(found(text), [], "{text}");
        }
        assert_eq!(found(&format!("task-{}", fake(ALNUM, 48, 24))), []);
    }

    #[test]
    fn jwts() {
        let header = base64url(br#"{"alg":"HS256","typ":"JWT"}"#);
        let payload = base64url(br#"{"sub":"1234567890","name":"Jo","iat":1516239022}"#);
        let jwt = format!("{header}.{payload}.{}", fake(URL_SAFE, 43, 26));
        assert_eq!(found(&format!("token {jwt} end")), [(Kind::Jwt, jwt.as_str())]);
        let unsigned = format!("{header}.{payload}.");
        assert_eq!(
            found(&format!("{unsigned} end")),
            [(Kind::Jwt, unsigned.as_str())]
        );
        // A bearer header names the token as a JWT, not a generic secret.
        assert_eq!(
            found(&format!("Authorization: Bearer {jwt}")),
            [(Kind::Jwt, jwt.as_str())]
        );
        // Segments that are not JSON objects.
        let list = base64url(b"[1,2,3]");
        assert_eq!(found(&format!("{header}.{list}.{}", fake(URL_SAFE, 43, 26))), []);
        assert_eq!(found("eyJhbGciOi.not-json.x"), []);
        // An unsecured token has no signature part at all.
        let two = format!("{header}.{payload}");
        assert_eq!(found(&format!("{two} end")), [(Kind::Jwt, two.as_str())]);
    }
}

mod generic {
    use super::*;

    #[test]
    fn key_names_inside_a_rejected_value_are_not_new_assignments_but_later_ones_are() {
        // Each `pass` here is inside the value of the first `pass=`: read once, rejected once.
        let repeated = "pass=".repeat(300);
        assert_eq!(found(&repeated), []);
        let text = format!("{repeated} password=q8Zr4Lm2Xv9Tn1Pw");
        assert_eq!(found(&text), [(Kind::GenericSecret, "q8Zr4Lm2Xv9Tn1Pw")]);
        // A token format inside a rejected value is still found.
        let text = format!("token=pass=pass=x{} AKIAQ4XJ7RZ2MLC5VNWD", "y".repeat(3));
        assert_eq!(found(&text), [(Kind::AwsAccessKey, "AKIAQ4XJ7RZ2MLC5VNWD")]);
    }

    #[test]
    fn high_entropy_values_of_key_like_names() {
        for (text, value) in [
            ("api_key=\"q8Zr4Lm2Xv9Tn1Pw\"", "q8Zr4Lm2Xv9Tn1Pw"),
            ("api_key = 'q8Zr4Lm2Xv9Tn1Pw'", "q8Zr4Lm2Xv9Tn1Pw"),
            ("{\"client_secret\": \"q8Zr4Lm2Xv9Tn1Pw\"}", "q8Zr4Lm2Xv9Tn1Pw"),
            ("export DB_PASSWORD=q8Zr4Lm2Xv9Tn1Pw", "q8Zr4Lm2Xv9Tn1Pw"),
            ("password: hunter2isgreat", "hunter2isgreat"),
            ("apiKey := \"q8Zr4Lm2Xv9Tn1Pw\"", "q8Zr4Lm2Xv9Tn1Pw"),
            ("'passwd' => 'q8Zr4Lm2Xv9Tn1Pw',", "q8Zr4Lm2Xv9Tn1Pw"),
            ("{\\\"token\\\": \\\"q8Zr4Lm2Xv9Tn1Pw\\\"}", "q8Zr4Lm2Xv9Tn1Pw"),
            (
                "os.environ[\"API_KEY\"] = \"q8Zr4Lm2Xv9Tn1Pw\"",
                "q8Zr4Lm2Xv9Tn1Pw",
            ),
            (
                "Authorization: Basic dXNlcjpwYXNzd29yZDEyMw==",
                "dXNlcjpwYXNzd29yZDEyMw==",
            ),
            ("GET /x?access_token=q8Zr4Lm2Xv9Tn1Pw&page=2", "q8Zr4Lm2Xv9Tn1Pw"),
            ("db:\n  password: Summer2024Sunshine\n", "Summer2024Sunshine"),
            ("\"PASSWORD=q8Zr4Lm2Xv9Tn1Pw\\nUSER=app\"", "q8Zr4Lm2Xv9Tn1Pw"),
            ("if token == \"q8Zr4Lm2Xv9Tn1Pw\" {", "q8Zr4Lm2Xv9Tn1Pw"),
            // Passwords people choose: plain words and phrases, where only a value can stand.
            ("password = \"correct horse battery\"", "correct horse battery"),
            ("password: hunter2", "hunter2"),
            ("DB_PASSWORD=letmein\n", "letmein"),
            (
                "Server=db01;Database=sales;User Id=app;Password=Tr0ub4dor;",
                "Tr0ub4dor",
            ),
            ("jdbc:mysql://db/sales?user=app&password=swordfish", "swordfish"),
            (
                "machine api.example.net login alice password hunter22",
                "hunter22",
            ),
        ] {
            assert_eq!(found(text), [(Kind::GenericSecret, value)], "{text}");
        }
    }

    #[test]
    fn prose_placeholders_and_code_are_not_secrets() {
        for text in [
            "token: ${TOKEN}",
            "token: \"{{ secrets.TOKEN }}\"",
            "max_tokens: 1024",
            "tokenizer = \"bert-base-uncased-v2\"",
            "token = self.tokenizer.encode",
            "password = getpass.getpass()",
            "api_key = os.environ.get(\"OPENAI_API_KEY\")",
            "token_url = \"https://auth.example.com/oauth2/token\"",
            "SECRET_NAME = \"PROD_DATABASE_PASSWORD\"",
            "use std::token::TokenStream;",
            "password: true",
            "password = config.db_password",
            "Reset your password: click the link below.",
            "public_key = \"q8Zr4Lm2Xv9Tn1Pw\"",
            "publishable_key: pk_q8Zr4Lm2Xv9Tn1Pw",
            "secret_id = \"123e4567-e89b-12d3-a456-426614174000\"",
            "The password: it is written on the note.",
            "pub time_to_first_token: HistogramVec,",
            "fn f(token: crate::auth::BearerToken2) {}",
            "pub __bindgen_anon_token: _bindgen_ty_30,",
            "struct_token: Token![struct],",
            "self.dot2_token == other.dot2_token",
            "{\"password\": \"line one\nline two\"}",
        ] {
            assert_eq!(found(text), [], "{text}");
        }
    }

    #[test]
    fn labels_types_paths_and_prose_are_not_passwords() {
        for text in [
            "\"confirmPassword\": \"Confirm password\",",
            "  password: String!\n",
            "  db_password: SecretStr\n",
            "PWD=/home/alice/src\n",
            "Each login requires a password change every 90 days.",
        ] {
            assert_eq!(found(text), [], "{text}");
        }
        // .netrc laid out over lines.
        assert_eq!(
            found("machine h\n  login alice\n  password hunter22\n"),
            [(Kind::GenericSecret, "hunter22")]
        );
        // A password under a vendor's name is judged as a password, not as that vendor's key.
        assert_eq!(
            found("SNOWFLAKE_PASSWORD=mississippi2024\n"),
            [(Kind::GenericSecret, "mississippi2024")]
        );
    }

    #[test]
    fn placeholders_where_a_secret_goes_are_reported_as_placeholders() {
        for (text, value) in [
            ("api_key=\"<your-api-key>\"", "<your-api-key>"),
            ("api_key = \"your_api_key_here\"", "your_api_key_here"),
            ("password = \"xxxxxxxxxxxxxxxx\"", "xxxxxxxxxxxxxxxx"),
            ("OPENAI_API_KEY=sk-...", "sk-..."),
            ("token: changeme", "changeme"),
        ] {
            assert_eq!(found(text), [(Kind::CredentialPlaceholder, value)], "{text}");
            assert_eq!(scanner().scan(text).level, Level::Internal, "{text}");
        }
    }

    #[test]
    fn passwords_in_urls() {
        let text = "DATABASE_URL=postgres://app:s3cr3tP4ss@db.internal:5432/app";
        assert_eq!(found(text), [(Kind::GenericSecret, "s3cr3tP4ss")]);
        // An unescaped `@` inside the password: the userinfo ends at the last one.
        assert_eq!(
            found("postgres://app:P@ssw0rd!23@db.internal:5432/app"),
            [(Kind::GenericSecret, "P@ssw0rd!23")]
        );
        // Plain words are passwords too.
        assert_eq!(
            found("mongodb://admin:hunter2@mongo.internal:27017"),
            [(Kind::GenericSecret, "hunter2")]
        );
        assert_eq!(
            found("postgres://user:password@localhost/db"),
            [(Kind::CredentialPlaceholder, "password")]
        );
        assert_eq!(
            found("http://foo:bar@example.com/ and https://admin:opensesame@example.com/"),
            [
                (Kind::CredentialPlaceholder, "bar"),
                (Kind::CredentialPlaceholder, "opensesame")
            ]
        );
        assert_eq!(
            found("redis://:${REDIS_PASSWORD}@cache:6379"),
            [(Kind::CredentialPlaceholder, "${REDIS_PASSWORD}")]
        );
    }
}

mod tenant {
    use super::*;

    fn with(config: &str) -> Scanner {
        Scanner::new(&serde_json::from_str(config).unwrap()).unwrap()
    }

    #[test]
    fn keywords_match_whole_words_ignoring_case() {
        let s = with(
            r#"{"keywords": [{"name": "code-names", "words": ["Falcon", "Blue Harbor"], "level": "confidential"}]}"#,
        );
        let text =
            "In project falcon we met BLUE HARBOR; FALCON. Not falconry, nor Falcon_v2, nor Blue Harbors.";
        assert_eq!(
            found_with(&s, text),
            [
                (Kind::Keyword, "falcon"),
                (Kind::Keyword, "BLUE HARBOR"),
                (Kind::Keyword, "FALCON")
            ]
        );
        let scan = s.scan(text);
        assert_eq!(scan.level, Level::Confidential);
        assert_eq!(scan.findings[0].rule.as_deref(), Some("code-names"));
    }

    #[test]
    fn nested_keywords_are_each_tried() {
        let s = with(
            r#"{"keywords": [{"name": "planes", "words": ["Falcon", "Falcon 9"], "level": "internal"}]}"#,
        );
        assert_eq!(found_with(&s, "Falcon 900 jets"), [(Kind::Keyword, "Falcon")]);
        assert_eq!(found_with(&s, "a Falcon 9 launch"), [(Kind::Keyword, "Falcon 9")]);
    }

    #[test]
    fn keywords_with_other_letters() {
        let s = with(r#"{"keywords": [{"words": ["Zürich Re"], "level": "internal"}]}"#);
        assert_eq!(
            found_with(&s, "at ZÜRICH RE and zürich re"),
            [(Kind::Keyword, "ZÜRICH RE"), (Kind::Keyword, "zürich re")]
        );
        assert_eq!(found_with(&s, "zürich rex"), []);
        assert_eq!(
            s.scan("Zürich Re").findings[0].rule.as_deref(),
            Some("keywords[0]")
        );
    }

    #[test]
    fn custom_patterns() {
        let s = with(r#"{"patterns": [{"name": "ticket", "pattern": "TCK-[0-9]{6}", "level": "internal"}]}"#);
        let scan = s.scan("see TCK-123456 and TCK-12");
        assert_eq!(scan.findings.len(), 1);
        assert_eq!(scan.findings[0].kind, Kind::CustomPattern);
        assert_eq!(scan.findings[0].range, 4..14);
        assert_eq!(scan.findings[0].rule.as_deref(), Some("ticket"));
        assert_eq!(scan.level, Level::Internal);
    }

    #[test]
    fn many_custom_patterns_go_through_a_set() {
        let patterns: Vec<_> = (0..12)
            .map(|i| serde_json::json!({"name": format!("p{i}"), "pattern": format!("Q{i}-[0-9]{{4}}"), "level": "internal"}))
            .collect();
        let config: ScannerConfig =
            serde_json::from_value(serde_json::json!({"patterns": patterns})).unwrap();
        let s = Scanner::new(&config).unwrap();
        let scan = s.scan("Q11-1234 then Q3-9999 then Q3-12 and a@example.com");
        let rules: Vec<_> = scan
            .findings
            .iter()
            .map(|f| (f.kind, f.rule.as_deref(), f.range.clone()))
            .collect();
        assert_eq!(
            rules,
            [
                (Kind::CustomPattern, Some("p11"), 0..8),
                (Kind::CustomPattern, Some("p3"), 14..21),
                (Kind::Email, None, 37..50),
            ]
        );
    }

    #[test]
    fn an_invalid_pattern_is_an_error_naming_it() {
        let config: ScannerConfig = serde_json::from_str(
            r#"{"patterns": [{"name": "broken", "pattern": "TCK-[0-9", "level": "internal"}]}"#,
        )
        .unwrap();
        let err = Scanner::new(&config).unwrap_err();
        assert!(matches!(err, ScannerError::InvalidPattern { index: 0, .. }));
        let msg = err.to_string();
        assert!(
            msg.contains("\"broken\"") && msg.contains("\"TCK-[0-9\""),
            "{msg}"
        );
        let empty: ScannerConfig =
            serde_json::from_str(r#"{"patterns": [{"name": "e", "pattern": "x*"}]}"#).unwrap();
        assert!(matches!(
            Scanner::new(&empty),
            Err(ScannerError::EmptyMatch { .. })
        ));
        let blank: ScannerConfig = serde_json::from_str(r#"{"keywords": [{"words": ["ok", " "]}]}"#).unwrap();
        assert!(matches!(
            Scanner::new(&blank),
            Err(ScannerError::EmptyKeyword { list: 0, word: 1 })
        ));
    }
}

mod ranges {
    use super::*;

    #[test]
    fn ranges_slice_to_the_match_among_multibyte_text() {
        let text = "Grüße 🎉 Karte 4111 1111 1111 1111 — für jürgen@example.de, IP 192.168.1.20 日本語 DE89 3704 0044 0532 0130 00 ✓";
        assert_eq!(
            found(text),
            [
                (Kind::PaymentCard, "4111 1111 1111 1111"),
                (Kind::Email, "rgen@example.de"),
                (Kind::IpAddress, "192.168.1.20"),
                (Kind::Iban, "DE89 3704 0044 0532 0130 00"),
            ]
        );
        for f in scanner().scan(text).findings {
            assert!(text.is_char_boundary(f.range.start) && text.is_char_boundary(f.range.end));
        }
        // Multi-byte characters right against the match.
        assert_eq!(
            found("é4111111111111111é"),
            [(Kind::PaymentCard, "4111111111111111")]
        );
    }

    #[test]
    fn adjacent_findings_in_one_string() {
        let text = "a@example.com,b@example.com 123-45-6789;4111111111111111";
        assert_eq!(
            found(text),
            [
                (Kind::Email, "a@example.com"),
                (Kind::Email, "b@example.com"),
                (Kind::UsSsn, "123-45-6789"),
                (Kind::PaymentCard, "4111111111111111"),
            ]
        );
    }
}

mod scans {
    use super::*;

    #[test]
    fn an_empty_or_clean_text_is_public() {
        for text in ["", "Hello, world. The meeting is at 10:30 in room 4."] {
            let scan = scanner().scan(text);
            assert_eq!(
                (scan.level, scan.complete, scan.findings.len()),
                (Level::Public, true, 0)
            );
            assert!(scan.kinds().is_empty());
        }
    }

    #[test]
    fn level_is_the_highest_and_kinds_are_distinct() {
        let scan = scanner().scan("a@example.com b@example.com 4111111111111111");
        assert_eq!(scan.level, Level::Restricted);
        assert_eq!(scan.kinds(), [Kind::PaymentCard, Kind::Email]);
        let scan = scanner().scan("mail a@example.com or call 415-555-2671");
        assert_eq!(scan.level, Level::Confidential);
        assert_eq!(scan.kinds(), [Kind::Email, Kind::Phone]);
    }

    #[test]
    fn text_over_the_limit_is_incomplete_and_restricted() {
        let config = ScannerConfig {
            limits: ScanLimits { max_bytes: 16 },
            ..ScannerConfig::default()
        };
        let s = Scanner::new(&config).unwrap();
        let at_limit = s.scan("0123456789abcdef");
        assert!(at_limit.complete);
        assert_eq!(at_limit.level, Level::Public);
        let over = s.scan("0123456789abcdefg");
        assert!(!over.complete);
        assert_eq!(over.level, Level::Restricted);
        assert_eq!(
            over.incomplete,
            Some(Incomplete::TooLarge {
                bytes: 17,
                max_bytes: 16
            })
        );
        assert_eq!(
            over.incomplete.unwrap().to_string(),
            "17 bytes of text is over the scanning limit of 16 bytes"
        );
        assert_eq!(ScanLimits::default().max_bytes, 8 * 1024 * 1024);
    }

    #[test]
    fn scan_all_tags_findings_with_their_string() {
        let s = scanner();
        let scan = s.scan_all([
            "hello",
            "mail a@example.com",
            "",
            "card 4111111111111111 and b@example.com",
        ]);
        let tagged: Vec<_> = scan
            .findings
            .iter()
            .map(|f| (f.index, f.kind, f.range.clone()))
            .collect();
        assert_eq!(
            tagged,
            [
                (1, Kind::Email, 5..18),
                (3, Kind::PaymentCard, 5..21),
                (3, Kind::Email, 26..39)
            ]
        );
        assert_eq!(scan.level, Level::Restricted);
        assert!(scan.complete);
    }

    #[test]
    fn scan_all_limits_the_total() {
        let config = ScannerConfig {
            limits: ScanLimits { max_bytes: 20 },
            ..ScannerConfig::default()
        };
        let s = Scanner::new(&config).unwrap();
        let scan = s.scan_all(["a@example.com", "0123456789", "xyz"]);
        assert!(!scan.complete);
        assert_eq!(scan.level, Level::Restricted);
        assert_eq!(
            scan.incomplete,
            Some(Incomplete::TooLarge {
                bytes: 26,
                max_bytes: 20
            })
        );
        // The string scanned before the limit keeps its finding.
        assert_eq!(scan.kinds(), [Kind::Email]);
        assert!(s.scan_all(["a@example.com", "0123456"]).complete);
    }

    #[test]
    fn the_scanner_is_shared_between_threads() {
        fn shareable<T: Send + Sync + Clone>() {}
        shareable::<Scanner>();
        let s = scanner();
        let handles: Vec<_> = (0..2)
            .map(|i| {
                let s = s.clone();
                std::thread::spawn(move || s.scan(&format!("{i}: 4111111111111111")).level)
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap(), Level::Restricted);
        }
    }

    /// Ordinary prose and code, full of numbers, versions, dates, hashes and key-like names, finds nothing.
    #[test]
    fn ordinary_text_finds_nothing() {
        let text = r#"
The release notes for version 2.14.0.1 list 37 fixes; see https://example.com/docs/v2?page=3#changes.
On 2024-01-15 at 10:30:45 UTC the p99 latency was 182.5 ms, up 12% from 1,204,332 requests.
Order number 1234567812345678 shipped; commit 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b merged.
Run `cargo build --release -j2` and open localhost:8080 or 127.0.0.1:3000 (::1 for IPv6).
UUID 123e4567-e89b-12d3-a456-426614174000, image sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c.
@dataclass
class Config:
    max_tokens: int = 1024
    temperature: float = 0.7
    tokenizer = AutoTokenizer.from_pretrained("bert-base-uncased")
    password = getpass.getpass("Password: ")
    api_key = os.environ["OPENAI_API_KEY"]
    token: str = "${TOKEN}"

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: std::net::SocketAddr = "0.0.0.0:8080".parse()?;
    let key = map.get(&token_id).copied().unwrap_or(u32::MAX);
    let secret_name = "prod/db/password";
    println!("{addr} {key} v1.2.3.4 {:?}", Vec::<u8>::with_capacity(4096));
    Ok(())
}
The author's passport was checked by the compass team; the tokenizer splits "monkey" into 2 tokens.
Matrix 3x3 with values 0.1234567890123456 and 4111 in cell (2, 3). Phone extension 4412.
"#;
        // Only the loopback and unspecified addresses, at their low level.
        assert_eq!(
            found(text),
            [
                (Kind::LocalAddress, "127.0.0.1"),
                (Kind::LocalAddress, "::1"),
                (Kind::LocalAddress, "0.0.0.0")
            ]
        );
        assert_eq!(scanner().scan(text).level, Level::Internal);
    }
}

mod config {
    use super::*;

    #[test]
    fn levels_parse_order_and_print() {
        assert!(Level::Public < Level::Internal && Level::Confidential < Level::Restricted);
        assert_eq!("Restricted".parse::<Level>(), Ok(Level::Restricted));
        assert!("secret".parse::<Level>().is_err());
        for l in Level::ALL {
            assert_eq!(l.as_str().parse::<Level>(), Ok(l));
            assert_eq!(l.to_string(), l.as_str());
        }
        assert_eq!(
            serde_json::to_string(&Level::Confidential).unwrap(),
            "\"confidential\""
        );
    }

    #[test]
    fn kinds_have_stable_names() {
        for k in Kind::ALL {
            assert_eq!(k.as_str().parse::<Kind>(), Ok(k));
        }
        assert_eq!(Kind::PaymentCard.as_str(), "payment_card");
        assert_eq!(Kind::GoogleApiKey.to_string(), "google_api_key");
        assert_eq!(Kind::Email.default_level(), Level::Confidential);
        assert_eq!(Kind::Iban.default_level(), Level::Restricted);
        assert!("credit_card".parse::<Kind>().is_err());
    }

    #[test]
    fn levels_and_disabled_detectors_apply() {
        let config: ScannerConfig = serde_json::from_str(
            r#"{"levels": {"email": "internal", "payment_card": "confidential"},
                "disabled": ["ip_address"], "limits": {"max_bytes": 1000}}"#,
        )
        .unwrap();
        let s = Scanner::new(&config).unwrap();
        assert_eq!(s.level(Kind::Email), Level::Internal);
        assert!(!s.is_enabled(Kind::IpAddress));
        assert_eq!(s.limits().max_bytes, 1000);
        let scan = s.scan("a@example.com from 192.168.1.20");
        assert_eq!(scan.kinds(), [Kind::Email]);
        assert_eq!(scan.level, Level::Internal);
        assert_eq!(s.scan("4111111111111111").level, Level::Confidential);
    }

    #[test]
    fn unknown_fields_kinds_and_levels_are_refused() {
        for bad in [
            r#"{"level": {}}"#,
            r#"{"levels": {"credit_card": "restricted"}}"#,
            r#"{"levels": {"email": "secret"}}"#,
            r#"{"keywords": [{"words": ["x"], "lvl": "internal"}]}"#,
            r#"{"limits": {"max_byte": 1}}"#,
        ] {
            assert!(serde_json::from_str::<ScannerConfig>(bad).is_err(), "{bad}");
        }
        let tenant: ScannerConfig = serde_json::from_str(r#"{"levels": {"keyword": "internal"}}"#).unwrap();
        assert!(matches!(
            Scanner::new(&tenant),
            Err(ScannerError::TenantKindLevel(Kind::Keyword))
        ));
    }

    #[test]
    fn a_scanner_with_everything_off_finds_nothing() {
        let config = ScannerConfig {
            disabled: Kind::ALL.into_iter().collect(),
            ..ScannerConfig::default()
        };
        let s = Scanner::new(&config).unwrap();
        assert_eq!(s.scan("a@example.com 4111111111111111").findings, []);
    }
}

fn recognised(kind: Kind, text: &str, part: &str) -> Recognised {
    let start = text.find(part).unwrap();
    Recognised {
        kind,
        index: 0,
        range: start..start + part.len(),
    }
}

#[test]
fn a_date_of_birth_needs_its_cue() {
    assert_eq!(
        found("Patient DOB 1975-03-04, invoice dated 2024-03-04."),
        [(Kind::DateOfBirth, "1975-03-04")]
    );
    assert_eq!(found("geb. 04.03.1975"), [(Kind::DateOfBirth, "04.03.1975")]);
    // A cue inside another word is no cue.
    assert_eq!(found("stubborn 1975-03-04"), []);
    let scan = scanner().scan("She was born on 4 March 1975.");
    assert_eq!(scan.level, Level::Internal);
    assert!(scan.combined.is_empty());
}

#[test]
fn health_and_special_terms_are_whole_words_ignoring_case() {
    assert_eq!(
        found("Diagnosed with HIV; takes Metformin."),
        [(Kind::Health, "HIV"), (Kind::Health, "Metformin")]
    );
    assert_eq!(found("archival shivers"), []);
    // The longest term that is a whole word: not "hiv positive" inside "HIV positively".
    assert_eq!(found("HIV positively"), [(Kind::Health, "HIV")]);
    let scan = scanner().scan("He converted and is a Muslim.");
    assert_eq!(scan.kinds(), [Kind::SpecialCategory]);
    assert_eq!(scan.findings[0].rule.as_deref(), Some("religion"));
    // Alone, a health term is internal: "What are the symptoms of diabetes?" may go to the cloud.
    assert_eq!(
        scanner().scan("What are the symptoms of diabetes?").level,
        Level::Internal
    );
}

#[test]
fn a_name_alone_is_internal_and_with_a_diagnosis_restricted() {
    let s = scanner();
    let text = "Who was Abraham Lincoln?";
    let mut scan = s.scan(text);
    s.merge(
        &mut scan,
        &[text],
        [recognised(Kind::PersonName, text, "Abraham Lincoln")],
    );
    assert_eq!(scan.level, Level::Internal);
    assert!(scan.combined.is_empty());

    let text = "Patient Maria Gonzalez, DOB 1975-03-04, was diagnosed with HIV last week.";
    let mut scan = s.scan(text);
    assert_eq!(scan.level, Level::Restricted, "a birth date with a diagnosis");
    s.merge(
        &mut scan,
        &[text],
        [recognised(Kind::PersonName, text, "Maria Gonzalez")],
    );
    assert_eq!(scan.level, Level::Restricted);
    let names: Vec<&str> = scan.combined.iter().map(|c| &*c.name).collect();
    assert_eq!(names, ["person-with-personal-data", "birth-date-with-health"]);
    assert_eq!(scan.kinds(), [Kind::PersonName, Kind::DateOfBirth, Kind::Health]);
}

#[test]
fn the_model_never_double_counts_what_a_detector_found() {
    let s = scanner();
    let text = "Pay GB82 WEST 1234 5698 7654 32 for Ana, who has Parkinson's.";
    let mut scan = s.scan(text);
    s.merge(
        &mut scan,
        &[text],
        [
            recognised(Kind::BankAccount, text, "GB82 WEST 1234 5698 7654 32"),
            recognised(Kind::PersonName, text, "Ana"),
            // The model reads "Parkinson" as a surname; the vocabulary knows it is a disease.
            recognised(Kind::PersonName, text, "Parkinson"),
        ],
    );
    assert_eq!(
        found_kinds(&scan, text),
        [
            (Kind::Iban, "GB82 WEST 1234 5698 7654 32"),
            (Kind::PersonName, "Ana"),
            (Kind::Health, "Parkinson")
        ]
    );
    assert_eq!(scan.level, Level::Restricted);
}

fn found_kinds<'t>(scan: &Scan, text: &'t str) -> Vec<(Kind, &'t str)> {
    scan.findings
        .iter()
        .map(|f| (f.kind, &text[f.range.clone()]))
        .collect()
}

#[test]
fn combinations_and_levels_are_configurable() {
    let config: ScannerConfig = serde_json::from_value(serde_json::json!({
        "levels": { "person_name": "confidential" },
        "combinations": [{ "name": "name-and-city", "all": ["person_name", "postal_address"], "level": "confidential" }],
    }))
    .unwrap();
    let s = Scanner::new(&config).unwrap();
    let text = "Ana, HIV";
    let mut scan = s.scan(text);
    s.merge(&mut scan, &[text], [recognised(Kind::PersonName, text, "Ana")]);
    // The default combinations are replaced: a name with a diagnosis is now only as high as its parts.
    assert_eq!(scan.level, Level::Confidential);
    assert!(scan.combined.is_empty());

    let none: ScannerConfig = serde_json::from_value(serde_json::json!({ "combinations": [] })).unwrap();
    let s = Scanner::new(&none).unwrap();
    let mut scan = s.scan(text);
    s.merge(&mut scan, &[text], [recognised(Kind::PersonName, text, "Ana")]);
    assert_eq!(scan.level, Level::Internal);

    let empty: ScannerConfig =
        serde_json::from_value(serde_json::json!({ "combinations": [{ "name": "x" }] })).unwrap();
    assert_eq!(
        Scanner::new(&empty).unwrap_err().to_string(),
        "combinations[0] (\"x\"): give the kinds that must be found together in all or any"
    );
    // A kind that is off is not merged.
    let off: ScannerConfig =
        serde_json::from_value(serde_json::json!({ "disabled": ["person_name"] })).unwrap();
    let s = Scanner::new(&off).unwrap();
    let mut scan = s.scan(text);
    s.merge(&mut scan, &[text], [recognised(Kind::PersonName, text, "Ana")]);
    assert_eq!(scan.kinds(), [Kind::Health]);
}

#[test]
fn a_scan_failed_closed_stays_restricted_after_a_merge() {
    let s = scanner();
    let mut scan = s.scan("hello");
    scan.fail_closed(Incomplete::ModelTimedOut { millis: 5 });
    assert_eq!(scan.level, Level::Restricted);
    assert!(!scan.complete);
    s.merge(&mut scan, &["hello"], []);
    assert_eq!(scan.level, Level::Restricted);
    assert_eq!(
        scan.incomplete.unwrap().to_string(),
        "the personal-data model did not finish within 5 ms"
    );
}

#[test]
fn an_identifier_needs_a_word_saying_what_it_is() {
    let s = scanner();
    let text = "Order 483920175 shipped; passport no. 530117924 belongs to the buyer.";
    let mut scan = s.scan(text);
    s.merge(
        &mut scan,
        &[text],
        [
            recognised(Kind::GovernmentId, text, "483920175"),
            recognised(Kind::Passport, text, "530117924"),
        ],
    );
    assert_eq!(found_kinds(&scan, text), [(Kind::Passport, "530117924")]);
}
