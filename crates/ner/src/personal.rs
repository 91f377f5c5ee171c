//! From the model's entities to personal data: a given name and a surname next to each other are one
//! name, and the parts of an address next to each other (building, street, unit, city, state, postcode)
//! are one address. A part alone ("the weather in Springfield", "Baker Street") or a city with its
//! state is not an address, and a URL is not personal data: they are left out.

use std::ops::Range;

use crate::tag::{Entity, EntityKind};

/// What a span of personal data is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PersonalKind {
    Name,
    Address,
    Email,
    Phone,
    TaxId,
    BankAccount,
    RoutingNumber,
    GovernmentId,
    Passport,
    DriversLicense,
}

/// One span of personal data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Personal {
    pub kind: PersonalKind,
    pub range: Range<usize>,
}

/// Most bytes between two parts of one name (`Mary  Jane`, `J. Smith`).
const NAME_GAP: usize = 3;
/// Most bytes between two parts of one address (`221B, Baker Street,\n London`).
const ADDRESS_GAP: usize = 6;

fn is_address_part(kind: EntityKind) -> bool {
    matches!(
        kind,
        EntityKind::BuildingNumber
            | EntityKind::StreetName
            | EntityKind::SecondaryAddress
            | EntityKind::City
            | EntityKind::State
            | EntityKind::ZipCode
    )
}

fn is_name_part(kind: EntityKind) -> bool {
    matches!(kind, EntityKind::GivenName | EntityKind::Surname)
}

/// Whether the bytes between two parts only separate them.
fn joins(text: &str, gap: Range<usize>, max: usize, separators: &[char]) -> bool {
    gap.len() <= max
        && text
            .get(gap)
            .is_some_and(|g| g.chars().all(|c| c.is_whitespace() || separators.contains(&c)))
}

/// The personal data in `text`, from the entities the model found in it (in order).
pub fn personal(text: &str, entities: &[Entity]) -> Vec<Personal> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(first) = entities.get(i) {
        let mut range = first.range.clone();
        let mut j = i + 1;
        let single = |kind| match kind {
            EntityKind::Email => Some(PersonalKind::Email),
            EntityKind::Phone => Some(PersonalKind::Phone),
            EntityKind::TaxId => Some(PersonalKind::TaxId),
            EntityKind::BankAccount => Some(PersonalKind::BankAccount),
            EntityKind::RoutingNumber => Some(PersonalKind::RoutingNumber),
            EntityKind::GovernmentId => Some(PersonalKind::GovernmentId),
            EntityKind::Passport => Some(PersonalKind::Passport),
            EntityKind::DriversLicense => Some(PersonalKind::DriversLicense),
            _ => None,
        };
        if is_name_part(first.kind) {
            while let Some(next) = entities.get(j)
                && is_name_part(next.kind)
                && joins(text, range.end..next.range.start, NAME_GAP, &['.', '-'])
            {
                range.end = next.range.end;
                j += 1;
            }
            out.push(Personal {
                kind: PersonalKind::Name,
                range,
            });
        } else if is_address_part(first.kind) {
            let mut parts = vec![first.kind];
            while let Some(next) = entities.get(j)
                && is_address_part(next.kind)
                && joins(
                    text,
                    range.end..next.range.start,
                    ADDRESS_GAP,
                    &[',', '.', '-', '#', '/'],
                )
            {
                range.end = next.range.end;
                parts.push(next.kind);
                j += 1;
            }
            // An address has two parts or more, one of them a street, a building number, a postcode
            // or a unit: a city and a state ("Springfield, IL"), or any part alone, is not one.
            let is_address = parts.len() >= 2
                && parts.iter().any(|k| {
                    matches!(
                        k,
                        EntityKind::StreetName
                            | EntityKind::BuildingNumber
                            | EntityKind::ZipCode
                            | EntityKind::SecondaryAddress
                    )
                });
            if is_address {
                out.push(Personal {
                    kind: PersonalKind::Address,
                    range,
                });
            }
        } else if let Some(kind) = single(first.kind) {
            out.push(Personal { kind, range });
        }
        i = j;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entity(kind: EntityKind, text: &str, part: &str) -> Entity {
        let start = text.find(part).unwrap();
        Entity {
            kind,
            range: start..start + part.len(),
        }
    }

    #[test]
    fn names_and_addresses_are_joined_and_lone_places_dropped() {
        let text = "Maria J. Gonzalez lives at 12 Elm Street, Apt 4, Springfield, IL 62704; see https://x.io. Paris is nice.";
        use EntityKind::*;
        let entities = [
            entity(GivenName, text, "Maria"),
            entity(GivenName, text, "J"),
            entity(Surname, text, "Gonzalez"),
            entity(BuildingNumber, text, "12"),
            entity(StreetName, text, "Elm Street"),
            entity(SecondaryAddress, text, "Apt 4"),
            entity(City, text, "Springfield"),
            entity(State, text, "IL"),
            entity(ZipCode, text, "62704"),
            entity(Url, text, "https://x.io"),
            entity(City, text, "Paris"),
        ];
        let found: Vec<(PersonalKind, &str)> = personal(text, &entities)
            .into_iter()
            .map(|p| (p.kind, &text[p.range]))
            .collect();
        assert_eq!(
            found,
            [
                (PersonalKind::Name, "Maria J. Gonzalez"),
                (
                    PersonalKind::Address,
                    "12 Elm Street, Apt 4, Springfield, IL 62704"
                ),
            ]
        );
    }

    #[test]
    fn two_names_apart_stay_two() {
        let text = "Ana and Ben";
        let entities = [
            entity(EntityKind::GivenName, text, "Ana"),
            entity(EntityKind::GivenName, text, "Ben"),
        ];
        assert_eq!(personal(text, &entities).len(), 2);
    }
}
