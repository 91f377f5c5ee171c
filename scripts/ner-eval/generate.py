#!/usr/bin/env python3
"""Generate the personal-data evaluation set, bench/ner-eval.jsonl.

    python3 scripts/ner-eval/generate.py [--out bench/ner-eval.jsonl] [--seed 20261201]

Needs PyPI `faker==37.1.0` (scripts/bench-ner installs it). The output is deterministic for a given seed
and Faker version: names, addresses and some identifiers come from Faker in many locales, and the
sentences around them from the templates below (clinical notes, HR e-mails, bank letters, chat-style
prompts). Each line:

    {"id": "name_health-001", "text": "...", "spans": [{"kind": "person_name", "start": 9, "end": 21}],
     "level": "restricted", "group": "name_health"}

`start` and `end` are byte offsets into the UTF-8 text. Kinds are Sluice's names. `level` is the level
under Sluice's default rules (levels.py) of the kinds labelled. Groups: name_health, name_dob,
name_address, name_id, name_special, name_only, contact (a name or none with an e-mail or phone number:
confidential), address_only, id_only, and negative (hard negatives: public figures, place names, products,
code, maths, dates that are not birthdays, health and union words with no person; a public figure's name
is labelled person_name and such a text is internal).

Template markup: `{slot}` is filled by a generator below, `[[...]]` inside a phrase marks the exact part
of it that is labelled, and a phrase starting with `f:` is only said of women.
"""

import argparse
import json
import random
import re
import sys
import unicodedata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from levels import level_of  # noqa: E402

try:
    from faker import Faker
except ImportError:
    sys.exit("generate.py needs PyPI faker==37.1.0 (scripts/bench-ner installs it)")

FAKER_VERSION = "37.1.0"
DEFAULT_SEED = 20261201

NAME_LOCALES = [
    "en_US", "en_US", "en_GB", "en_GB", "de_DE", "fr_FR", "es_ES", "it_IT", "nl_NL", "pt_PT", "pl_PL",
    "sv_SE", "cs_CZ", "da_DK", "en_IE", "ro_RO", "tr_TR",
]
ADDRESS_LOCALES = [
    "en_US", "en_US", "en_GB", "en_GB", "de_DE", "fr_FR", "es_ES", "it_IT", "nl_NL", "pt_PT", "pl_PL",
    "sv_SE", "cs_CZ", "da_DK",
]
# The locale whose names and addresses go with a template written in that language.
LANG_LOCALE = {
    "de": "de_DE", "fr": "fr_FR", "es": "es_ES", "it": "it_IT", "nl": "nl_NL", "pt": "pt_PT",
    "pl": "pl_PL", "sv": "sv_SE",
}
MONTHS = {
    "en": ["January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December"],
    "de": ["Januar", "Februar", "März", "April", "Mai", "Juni", "Juli", "August", "September", "Oktober",
           "November", "Dezember"],
    "fr": ["janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août", "septembre", "octobre",
           "novembre", "décembre"],
    "es": ["enero", "febrero", "marzo", "abril", "mayo", "junio", "julio", "agosto", "septiembre",
           "octubre", "noviembre", "diciembre"],
    "it": ["gennaio", "febbraio", "marzo", "aprile", "maggio", "giugno", "luglio", "agosto", "settembre",
           "ottobre", "novembre", "dicembre"],
    "nl": ["januari", "februari", "maart", "april", "mei", "juni", "juli", "augustus", "september",
           "oktober", "november", "december"],
    "pt": ["janeiro", "fevereiro", "março", "abril", "maio", "junho", "julho", "agosto", "setembro",
           "outubro", "novembro", "dezembro"],
}
MILITARY = re.compile(r"\b(PSC|USNS|USNV|USS|USCGC|APO|FPO|DPO|Unit \d+ Box)\b")
ORGS = [
    "Northwind Logistics", "Bluefield Analytics", "Harbour Street Dental", "Crestline Insurance",
    "Riverbank Credit Union", "Meridian Health Partners", "Oakridge Primary School", "Lumen Software",
    "Greywater Engineering", "Tallis & Brook Solicitors",
]
EMAIL_DOMAINS = ["example.com", "example.org", "example.net", "mail.example.com", "corp.example.org"]

# ---------------------------------------------------------------------------------------------------------
# Phrases. `[[...]]` is the labelled part; the kind comes from the list the phrase is in.

HEALTH_EN = [
    "was diagnosed with [[HIV]] in {year}",
    "takes [[metformin]] for [[type 2 diabetes]]",
    "f:is being treated for [[breast cancer]]",
    "has [[schizophrenia]]",
    "has been prescribed [[sertraline]] for [[depression]]",
    "is halfway through [[chemotherapy]]",
    "has [[multiple sclerosis]]",
    "had an [[epileptic seizure]] at work last week",
    "has [[bipolar disorder]]",
    "uses an [[insulin pump]]",
    "was admitted with [[pneumonia]] on {date}",
    "is in recovery from [[alcohol dependence]]",
    "is on [[methadone]] maintenance",
    "tested positive for [[hepatitis C]]",
    "has early [[Alzheimer's disease]]",
    "has [[Crohn's disease]]",
    "f:is 20 weeks [[pregnant]]",
    "f:had a [[miscarriage]] in the spring",
    "has [[PTSD]]",
    "was diagnosed with [[ADHD]] as an adult",
    "is taking [[lithium]]",
    "has [[COPD]]",
    "has [[Parkinson's disease]]",
    "had a [[stroke]] in {year}",
    "is on [[dialysis]] three times a week",
    "is being treated for [[anorexia nervosa]]",
    "has [[asthma]] and carries an [[inhaler]]",
    "was prescribed [[atorvastatin]] for [[high cholesterol]]",
    "has [[leukaemia]]",
    "has [[lupus]]",
    "takes [[levothyroxine]] for [[hypothyroidism]]",
    "has [[sickle cell disease]]",
    "received a [[kidney transplant]] in {year}",
    "is going through [[IVF treatment]]",
    "has [[long COVID]]",
    "has [[coeliac disease]]",
    "takes [[warfarin]] after a [[pulmonary embolism]]",
    "is recovering from a [[hip replacement]]",
    "has [[generalised anxiety disorder]]",
    "is [[HIV positive]]",
    "has [[bowel cancer]]",
    "was hospitalised for [[suicidal ideation]]",
    "has an [[eating disorder]]",
    "is on [[antiretroviral therapy]]",
    "has [[type 1 diabetes]]",
    "suffers from [[chronic migraines]]",
    "has [[autism spectrum disorder]]",
    "had a [[heart attack]] in {year}",
]
HEALTH_LANG = {
    "de": ["leidet an [[Diabetes mellitus Typ 2]]", "f:ist an [[Brustkrebs]] erkrankt",
           "nimmt [[Metformin]] gegen [[Diabetes]]", "hat [[Depressionen]]", "hat [[Multiple Sklerose]]"],
    "fr": ["souffre de [[dépression]]", "prend de la [[metformine]] pour son [[diabète]]",
           "suit une [[chimiothérapie]]", "a la [[sclérose en plaques]]", "a un [[cancer du poumon]]"],
    "es": ["tiene [[diabetes tipo 2]]", "padece [[esquizofrenia]]", "recibe [[quimioterapia]]",
           "f:tiene [[cáncer de mama]]", "toma [[insulina]] cada día"],
    "it": ["soffre di [[depressione]]", "ha il [[diabete di tipo 2]]", "è in [[chemioterapia]]"],
    "nl": ["heeft [[diabetes]]", "f:wordt behandeld voor [[borstkanker]]", "heeft een [[depressie]]"],
    "pt": ["tem [[diabetes tipo 2]]", "sofre de [[depressão]]"],
    "pl": ["choruje na [[cukrzycę]]", "ma [[depresję]]"],
    "sv": ["har [[diabetes]]", "f:behandlas för [[bröstcancer]]"],
}
SPECIAL_EN = [
    "is a [[member of the Unite union]]",
    "is the [[GMB union rep]] for the warehouse",
    "joined the [[RMT union]] last year",
    "is an active [[trade union member]]",
    "[[converted to Islam]] last year",
    "is a [[practising Catholic]]",
    "is [[Jewish]]",
    "[[attends the mosque]] on Fridays",
    "is a [[Jehovah's Witness]]",
    "is an [[atheist]]",
    "is a [[Sikh]]",
    "[[came out as gay]] last month",
    "is [[homosexual]]",
    "is [[bisexual]]",
    "is [[transgender]]",
    "lives with a [[same-sex partner]]",
    "has a [[criminal record]]",
    "was [[convicted of fraud]] in {year}",
    "[[served a prison sentence]] for burglary",
    "is on the [[sex offenders register]]",
    "is a [[member of the Labour Party]]",
    "is a [[Conservative Party activist]]",
    "is a [[member of the Communist Party]]",
    "volunteers for the [[Green Party]]",
    "is [[of Roma origin]]",
    "is [[of Pakistani descent]]",
    "is a [[Hindu]]",
    "is a [[Buddhist]]",
    "[[converted to Christianity]] at university",
    "is [[Muslim]]",
]
SPECIAL_LANG = {
    "de": ["ist [[Gewerkschaftsmitglied]] bei ver.di", "ist [[homosexuell]]", "ist [[vorbestraft]]"],
    "fr": ["est [[syndiqué à la CGT]]", "est [[musulman]]", "a un [[casier judiciaire]]"],
    "es": ["está [[afiliado a CCOO]]", "es [[gay]]", "tiene [[antecedentes penales]]"],
}

# Identifier phrases: (kind, English phrase); `{v}` is the value, labelled with the kind.
ID_PHRASES = {
    "passport": ["passport number {v}", "passport no. {v}", "US passport {v}", "Passport #: {v}",
                 "passport ({v})", "UK passport number {v}"],
    "drivers_license": ["driver's license number {v}", "DL# {v}", "driving licence {v}",
                        "license no. {v}", "driver's licence {v}"],
    "tax_id": ["ITIN {v}", "taxpayer ID {v}", "UTR {v}", "Steuer-ID {v}", "codice fiscale {v}",
               "NIF {v}", "tax identification number {v}", "tax ID {v}"],
    "government_id": ["NHS number {v}", "PESEL {v}", "personnummer {v}", "BSN {v}",
                      "numéro de sécurité sociale {v}", "CNP {v}", "national ID number {v}"],
    "us_ssn": ["SSN {v}", "social security number {v}", "SSN: {v}"],
    "iban": ["IBAN {v}", "account {v}", "IBAN: {v}"],
    "payment_card": ["card number {v}", "card {v}", "credit card {v}", "Visa {v}"],
    "bank_account": ["account number {v}", "acct {v}", "account no. {v}"],
}
# The value generator that goes with a phrase (by the phrase's cue); see Gen.id_value.
ID_CUE_VALUE = {
    "US passport": "us_passport", "UK passport": "uk_passport", "ITIN": "itin", "taxpayer ID": "itin",
    "UTR": "utr", "Steuer-ID": "steuer_id", "codice fiscale": "codice_fiscale", "NIF": "pt_nif",
    "NHS": "nhs", "PESEL": "pesel", "personnummer": "personnummer", "BSN": "bsn",
    "numéro de sécurité sociale": "nir", "CNP": "cnp", "national ID": "cnp",
    "driving licence": "uk_dl", "driver's licence": "uk_dl",
}

# Slots for one kind of identifier, where the sentence around it names the kind.
TYPED_ID_SLOTS = {"passport": ["passport"], "dl": ["drivers_license"], "card": ["payment_card"],
                  "taxid": ["tax_id"], "govid": ["government_id"], "ssn": ["us_ssn"]}
# Conditions that read alone ("your {health_bare}", "{health_cap} - that's what ...").
HEALTH_BARE = [h for h in HEALTH_EN if h.startswith("has [[") and "]] " not in h and h.endswith("]]")]

# ---------------------------------------------------------------------------------------------------------
# Templates: (lang, text). Slots: {name} {name2} {name3} (full names of persons 1 to 3), {rname} (SURNAME,
# First of person 1), {first} {first2} (given names of persons 1 and 2), {tname} (title and surname of
# person 1), {last2} (surname of person 2), {addr} (one line), {addr_ml} (lines), {dob} {dob2} (cue and
# date), {born} ("born ..." only), {dob_line}, {health} {health2} (phrases), {health_bare} {health_cap} (a
# condition alone), {special} {special_bare}, {id} {id2} (any identifier with its cue), {passport} {dl}
# {card} {taxid} {govid} {ssn} (one kind), {iban_v} (an IBAN alone), {bank} (routing and account numbers),
# {email} {email2}, {phone}, {date} (a date that is not a birth date), {org}, {year}, {age}. A template
# whose text starts with "lc:" is a lower-case chat prompt.

T_NAME_HEALTH = [
    ("en", "Patient {name} {health}. Follow-up booked for {date}."),
    ("en", "Summarise this note: {name} {health} and asked about sick leave."),
    ("en", "Draft a letter to {name}'s GP explaining that she {health}."),
    ("en", "Clinic note ({date}): {rname}, {age} y/o, {health}. Reviewed by Dr {last2}."),
    ("en", "Hi team, just so you know, {name} {health}, so please cover her shifts this week."),
    ("en", "Can you rewrite this more kindly? \"{first}, we know about your {health_bare}, but the deadline stands.\""),
    ("en", "The patient with {health_bare} in bay 4 is {name}."),
    ("en", "Subject: absence\n\nDear HR,\n\nMy colleague {name} {health}. Could we arrange a phased return?\n\nThanks,\n{name2}"),
    ("en", "Translate into Spanish: {name} {health} and needs an interpreter at the hospital."),
    ("en", "{name} {health}; {name2} {health2}. Write a handover summary for the night nurse."),
    ("en", "lc:write a short get-well message for {name}, who {health}"),
    ("en", "lc:my neighbour {name} {health}, how can i help her day to day?"),
    ("en", "Please prepare an insurance claim for {tname}, who {health}."),
    ("en", "Referral: {name} ({age}) {health}. Please see within two weeks."),
    ("en", "Occupational health update: {name} {health}. Adjustments: no night shifts."),
    ("en", "Ward list: {name} - {health}; {name2} - {health2}."),
    ("en", "Explain to {first} in plain language what it means that she {health}."),
    ("en", "Discharge summary for {rname}: {health}. GP to review medication on {date}."),
    ("en", "Write a text message reminding {name} about the appointment; she {health}."),
    ("en", "The employee in question, {name}, {health} and has asked for flexible hours."),
    ("en", "Please check the grammar: \"Our client {name} {health} and is unable to attend court.\""),
    ("en", "lc:summarize for the case file: {name} {health}"),
    ("en", "Notes from today's call with {name}: she {health}. Next call on {date}."),
    ("en", "Pharmacy request for {name}: she {health}; repeat prescription due {date}."),
    ("en", "As discussed, {tname} {health} and will be off until further notice."),
    ("en", "{health_cap} - that's what the consultant told {name} yesterday. Write her a checklist."),
    ("de", "Bitte fasse zusammen: {name} {health} und ist bis {date} krankgeschrieben."),
    ("de", "Arztbrief: Frau {name} {health}."),
    ("fr", "Résume ce dossier : {name} {health} depuis {year}."),
    ("fr", "Compte rendu : {name} {health}."),
    ("es", "Resume la nota: {name} {health} desde {year}."),
    ("it", "Riassumi: {name} {health} da alcuni anni."),
    ("nl", "Vat samen: {name} {health}."),
    ("pt", "Resuma a nota: {name} {health}."),
    ("pl", "Podsumuj notatkę: {name} {health}."),
    ("sv", "Sammanfatta: {name} {health}."),
]
T_NAME_DOB = [
    ("en", "Patient: {name}, {dob}. Allergies: none known."),
    ("en", "Please update the HR record for {name} ({dob}) with the new bank details next week."),
    ("en", "{name} was {born} in Leeds and joined us in {year}."),
    ("en", "Draft a letter to {name}, {dob}, confirming the appointment on {date}."),
    ("en", "lc:can you check if {name} {dob} is old enough to sign the contract?"),
    ("en", "New starter: {name}; {dob}; start date {date}."),
    ("en", "Verify the identity of {tname}, {dob}, before releasing the records."),
    ("en", "Summarise this note: client {name} ({dob}) called about her pension."),
    ("en", "The applicant, {name} ({dob}), signed the form on {date}."),
    ("en", "Registration form\nName: {name}\n{dob_line}\nCourse: Data Science"),
    ("en", "Add {name} to the guest list for the gala, {dob}, vegetarian."),
    ("en", "Membership card for {rname}, {dob}, valid until {date}."),
    ("en", "How old is {name} today if she was {born}?"),
    ("en", "Children in the group: {name} ({dob}) and {name2} ({dob2})."),
    ("en", "I need a birthday card text for {first}; she was {born}."),
    ("de", "Antrag von {name}, {dob}, eingegangen am {date}."),
    ("de", "Bitte prüfe die Angaben: {name}, {dob}, wohnhaft in Köln."),
    ("fr", "Dossier de {name}, {dob}, à transmettre à la mairie."),
    ("fr", "Merci de vérifier l'identité de {name}, {dob}."),
    ("es", "Solicitud de {name}, {dob}, recibida el {date}."),
    ("it", "Pratica di {name}, {dob}, da completare entro venerdì."),
    ("nl", "Aanvraag van {name}, {dob}, ontvangen."),
    ("pt", "Processo de {name}, {dob}, em análise."),
    ("pl", "Wniosek: {name}, {dob}."),
    ("sv", "Ansökan från {name}, {dob}."),
]
T_NAME_ADDRESS = [
    ("en", "Draft a letter to {name} at {addr} about the overdue invoice."),
    ("en", "Ship the replacement laptop to {name}, {addr}."),
    ("en", "{name}\n{addr_ml}\n\nDear {first},\n\nThank you for your order of {date}."),
    ("en", "lc:what's the best way to get from the station to {addr}? i'm visiting {name} there"),
    ("en", "Please update the address for {rname} to {addr}."),
    ("en", "Summarise this note: {name} moved to {addr} and wants her post redirected."),
    ("en", "Tenant: {name}. Property: {addr}. Rent due on the 1st."),
    ("en", "Write a reference for {name}, who lived at {addr} for five years."),
    ("en", "Delivery for {tname}, {addr}: leave with the neighbour."),
    ("en", "Send the court papers to {name} at {addr} by recorded delivery."),
    ("en", "New customer record - name: {name}; address: {addr}; segment: retail."),
    ("en", "Can you format this as an envelope label?\n{name}\n{addr_ml}"),
    ("en", "{name} and {name2} share the flat at {addr}."),
    ("en", "The visit to {name} ({addr}) is scheduled for {date}."),
    ("de", "Bitte schreibe einen Brief an {name}, {addr}, wegen der Mieterhöhung."),
    ("de", "Lieferadresse: {name}, {addr}."),
    ("fr", "Envoyer le colis à {name}, {addr}."),
    ("es", "Enviar la factura a {name}, {addr}."),
    ("it", "Spedire a {name}, {addr}."),
    ("nl", "Stuur de brief naar {name}, {addr}."),
    ("pt", "Enviar a carta para {name}, {addr}."),
    ("pl", "Wyślij paczkę do: {name}, {addr}."),
    ("sv", "Skicka brevet till {name}, {addr}."),
]
T_NAME_ID = [
    ("en", "Please verify {name}'s {passport} before the flight."),
    ("en", "Customer {name} provided {id} for the KYC check."),
    ("en", "lc:can you fill in this form for {name}, {id}"),
    ("en", "Summarise this note: {name} called to update her {id}."),
    ("en", "Payroll change: {name}, {bank}, effective {date}."),
    ("en", "Dear {first},\n\nWe have received your {id}. Your application is now complete.\n\nKind regards,\n{org}"),
    ("en", "Bank letter: we confirm that {tname} holds {bank} with us."),
    ("en", "Set up a direct deposit for {name}: {bank}."),
    ("en", "{name} - {id} - {id2}"),
    ("en", "Draft an e-mail to {name} asking her to confirm {id}."),
    ("en", "Refund for {name} to {card}, amount 245.00 EUR."),
    ("en", "Background check: {rname}, {id}, no issues found."),
    ("en", "The rental agreement lists {name} with {id}."),
    ("en", "Onboarding checklist for {name}: {id} (received), contract (pending)."),
    ("en", "Please charge {name}'s {card}, expiry 09/28, for the deposit."),
    ("en", "Traffic stop report: driver {name}, {dl}, no previous offences on file."),
    ("en", "Tax return for {name}: {taxid}, filing status single."),
    ("en", "Patient registration for {name}: {govid}."),
    ("en", "Employee file: {name}, {ssn}, hired {date}."),
    ("en", "HR e-mail: {name} ({email}) has sent her {id} for the right-to-work check."),
    ("en", "Why was the wire to {name} ({bank}) rejected?"),
    ("de", "Bitte überweise 500 EUR an {name}, IBAN {iban_v}."),
    ("fr", "Virement pour {name} : IBAN {iban_v}."),
    ("es", "Transferencia a {name}, IBAN {iban_v}."),
    ("it", "Bonifico a favore di {name}, IBAN {iban_v}."),
    ("nl", "Maak 200 euro over naar {name}, IBAN {iban_v}."),
    ("pl", "Przelew dla {name}, IBAN {iban_v}."),
]
T_NAME_SPECIAL = [
    ("en", "Summarise this note: {name} {special} and asked for time off for meetings."),
    ("en", "HR case: {name} {special}; make sure this is not shared with her manager."),
    ("en", "lc:my coworker {name} {special}, how should i bring up the rota issue with her?"),
    ("en", "Draft a letter to {name} confirming that she {special}."),
    ("en", "Background report: {rname} {special}."),
    ("en", "Write a diary entry: today I found out that {name} {special}."),
    ("en", "{name} {special}. Rewrite this sentence to be neutral."),
    ("en", "Hi team, FYI {first} {special}; please keep it to yourselves."),
    ("en", "Confidential: {tname} {special} and requested a quiet room."),
    ("en", "Check this paragraph for tone: \"{name}, who {special}, was not promoted.\""),
    ("en", "Members list: {name} ({special_bare}), {name2} ({special2_bare})."),
    ("en", "The tenant, {name}, {special}; the landlord wants to know if that matters."),
    ("en", "Interview notes ({date}): candidate {name} mentioned she {special}."),
    ("de", "Notiz: {name} {special}."),
    ("fr", "Note : {name} {special}."),
    ("es", "Nota: {name} {special}."),
]
T_NAME_ONLY = [
    ("en", "Can you proofread this e-mail I'm sending to {name}?"),
    ("en", "Please ask {first} to review the Q3 slides before {date}."),
    ("en", "Attendees: {name}, {name2} and {name3}."),
    ("en", "lc:write a thank-you note to {name} for covering my shift"),
    ("en", "Draft a polite reminder to {name} about the team offsite."),
    ("en", "{name} will present the roadmap on Thursday."),
    ("en", "Meeting notes: {first} owns the migration, {first2} owns testing."),
    ("en", "Congratulate {name} on ten years at {org}."),
    ("en", "Who should sign the purchase order, {name} or {name2}?"),
    ("en", "Write a LinkedIn recommendation for {name}, a great project manager."),
    ("en", "The quarterly report was compiled by {tname}."),
    ("en", "lc:remind me to call {first} tomorrow about the budget"),
    ("en", "Here is the rota: Monday {name}, Tuesday {name2}, Wednesday {name3}."),
    ("en", "Translate into French: \"{name} will join the call late today.\""),
    ("de", "Bitte leite die Unterlagen an {name} weiter."),
    ("fr", "Merci de transmettre le dossier à {name}."),
    ("es", "Por favor, envía el informe a {name}."),
    ("it", "Inoltra il documento a {name}, grazie."),
]
T_CONTACT = [
    ("en", "Please add {name} ({email}) to the project channel."),
    ("en", "Call {name} on {phone} to confirm the delivery slot."),
    ("en", "lc:what's a polite way to ask {first} for feedback? her email is {email}"),
    ("en", "Contact for the venue: {name}, {phone}, {email}."),
    ("en", "Forward the minutes to {email} and {email2}."),
    ("en", "If the alarm goes off, ring {phone}."),
    ("en", "Signature block:\n{name}\nAccount Manager, {org}\n{phone}\n{email}"),
    ("en", "The supplier asked us to reply to {email} by {date}."),
    ("de", "Bitte ruf {name} unter {phone} zurück."),
    ("fr", "Contact : {name}, {email}."),
]
T_ADDRESS_ONLY = [
    ("en", "Ship the replacement part to {addr}."),
    ("en", "lc:how long does it take to walk from {addr} to the city centre?"),
    ("en", "The flat at {addr} has a leak in the bathroom."),
    ("en", "Format this address for an envelope: {addr}."),
    ("en", "Deliveries should go to the side entrance at {addr}."),
    ("en", "Is {addr} inside the congestion charge zone?"),
    ("en", "Return address:\n{addr_ml}"),
    ("de", "Lieferadresse: {addr}."),
    ("fr", "Adresse de livraison : {addr}."),
    ("es", "Dirección de entrega: {addr}."),
    ("it", "Indirizzo di consegna: {addr}."),
    ("nl", "Afleveradres: {addr}."),
    ("pl", "Adres dostawy: {addr}."),
]
T_ID_ONLY = [
    ("en", "Is {id} a valid format?"),
    ("en", "lc:the customer read out {id} over the phone, please log it"),
    ("en", "Reconcile the payment from {bank}."),
    ("en", "Ticket #4411: caller gave {id} but the system rejects it."),
    ("en", "Please mask {id} in the attached log line."),
    ("en", "The form has {id} and {id2}; check both."),
    ("en", "Refund to {card} failed with error 51."),
    ("en", "Scan of the travel document: {passport}, expires 2031."),
    ("en", "Update the vendor record with {bank}."),
]


def ordinal(n):
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def fold_ascii(s):
    s = s.replace("ł", "l").replace("Ł", "L").replace("ø", "o").replace("æ", "ae").replace("ß", "ss")
    return unicodedata.normalize("NFKD", s).encode("ascii", "ignore").decode()


def parse_phrase(phrase, kind):
    """'has [[HIV]]' -> [('has ', None), ('HIV', kind)]."""
    pieces = []
    for i, part in enumerate(re.split(r"\[\[|\]\]", phrase)):
        if part:
            pieces.append((part, kind if i % 2 == 1 else None))
    return pieces


class Gen:
    def __init__(self, seed):
        self.rng = random.Random(seed)
        self.fakers = {}
        for i, loc in enumerate(sorted(set(NAME_LOCALES + ADDRESS_LOCALES + list(LANG_LOCALE.values())))):
            f = Faker(loc)
            f.seed_instance(seed + i)
            self.fakers[loc] = f

    # --- people -----------------------------------------------------------------------------------------
    def person(self, loc, female=None):
        f = self.fakers[loc]
        if female is None:
            female = self.rng.random() < 0.6
        first = f.first_name_female() if female else f.first_name_male()
        last = f.last_name_female() if female else f.last_name_male()
        first = first.split(" ")[0] if loc != "es_ES" else first
        title = self.rng.choice(["Ms", "Mrs", "Dr"] if female else ["Mr", "Dr"])
        middle = ""
        if loc == "en_US" and self.rng.random() < 0.2:
            middle = f" {self.rng.choice('ABCDEFGHJKLMNPRSTW')}."
        return {"first": first, "last": last, "full": f"{first}{middle} {last}", "title": title,
                "female": female, "loc": loc}

    def address(self, loc, multiline=False):
        f = self.fakers[loc]
        while True:
            a = f.address()
            if not MILITARY.search(a):
                break
        lines = [re.sub(r"\s+", " ", line).strip() for line in a.split("\n")]
        return "\n".join(lines) if multiline else ", ".join(lines)

    # --- dates ------------------------------------------------------------------------------------------
    def birth_date(self):
        return self.rng.randint(1938, 2006), self.rng.randint(1, 12), self.rng.randint(1, 28)

    def dob(self, lang, female, born_only=False):
        """Cue and date: [(cue, None), (date, 'date_of_birth')]; `born_only` for "was {born}"."""
        y, m, d = self.birth_date()
        mon = MONTHS.get(lang, MONTHS["en"])[m - 1]
        if lang == "en":
            options = [
                ("DOB ", f"{y}-{m:02d}-{d:02d}"), ("DOB: ", f"{m:02d}/{d:02d}/{y}"),
                ("born on ", f"{d} {mon} {y}"), ("born ", f"{mon} {d}, {y}"),
                ("date of birth: ", f"{d:02d}/{m:02d}/{y}"), ("D.O.B. ", f"{d:02d}.{m:02d}.{y}"),
                ("date of birth ", f"{d} {mon[:3]} {y}"), ("born on the ", f"{ordinal(d)} of {mon} {y}"),
                ("birth date ", f"{y}-{m:02d}-{d:02d}"), ("d.o.b. ", f"{m}/{d}/{y % 100:02d}"),
            ]
        elif lang == "de":
            options = [("geb. ", f"{d:02d}.{m:02d}.{y}"), ("geboren am ", f"{d}. {mon} {y}"),
                       ("Geburtsdatum: ", f"{d:02d}.{m:02d}.{y}")]
        elif lang == "fr":
            options = [("née le " if female else "né le ", f"{d} {mon} {y}"),
                       ("date de naissance : ", f"{d:02d}/{m:02d}/{y}")]
        elif lang == "es":
            options = [("nacida el " if female else "nacido el ", f"{d} de {mon} de {y}"),
                       ("fecha de nacimiento: ", f"{d:02d}/{m:02d}/{y}")]
        elif lang == "it":
            options = [("nata il " if female else "nato il ", f"{d} {mon} {y}"),
                       ("data di nascita: ", f"{d:02d}/{m:02d}/{y}")]
        elif lang == "nl":
            options = [("geboren op ", f"{d} {mon} {y}"), ("geboortedatum: ", f"{d:02d}-{m:02d}-{y}")]
        elif lang == "pt":
            options = [("nascida em " if female else "nascido em ", f"{d:02d}/{m:02d}/{y}")]
        elif lang == "pl":
            options = [("ur. ", f"{d:02d}.{m:02d}.{y}"), ("data urodzenia: ", f"{d:02d}.{m:02d}.{y}")]
        elif lang == "sv":
            options = [("född ", f"{y}-{m:02d}-{d:02d}"), ("födelsedatum: ", f"{y}-{m:02d}-{d:02d}")]
        else:
            raise ValueError(lang)
        if born_only:
            options = [o for o in options if o[0].startswith("born")]
        cue, date = self.rng.choice(options)
        return [(cue, None), (date, "date_of_birth")]

    def other_date(self, lang):
        y, m, d = self.rng.randint(2023, 2026), self.rng.randint(1, 12), self.rng.randint(1, 28)
        if lang == "en":
            return self.rng.choice([f"{y}-{m:02d}-{d:02d}", f"{d} {MONTHS['en'][m - 1]}",
                                    f"{MONTHS['en'][m - 1]} {d}", f"{d:02d}/{m:02d}/{y}"])
        return f"{d:02d}.{m:02d}.{y}" if lang in ("de", "pl") else f"{d:02d}/{m:02d}/{y}"

    # --- contact ----------------------------------------------------------------------------------------
    def email(self, person=None):
        if person is None:
            user = self.rng.choice(["accounts", "info", "support", "bookings", "office"])
        else:
            first, last = fold_ascii(person["first"]).lower(), fold_ascii(person["last"]).lower()
            last = re.sub(r"[^a-z]", "", last)
            user = self.rng.choice([f"{first}.{last}", f"{first[0]}{last}", f"{first}{self.rng.randint(1, 99)}"])
        return f"{user}@{self.rng.choice(EMAIL_DOMAINS)}"

    def phone(self):
        r = self.rng
        kind = r.randrange(6)
        if kind == 0:
            return f"({r.randint(201, 989)}) {r.randint(200, 999)}-{r.randint(0, 9999):04d}"
        if kind == 1:
            return f"+1 {r.randint(201, 989)} {r.randint(200, 999)} {r.randint(0, 9999):04d}"
        if kind == 2:
            return f"+44 20 {r.randint(7000, 8999)} {r.randint(0, 9999):04d}"
        if kind == 3:
            return f"+44 7700 {r.randint(900000, 900999)}"
        if kind == 4:
            return f"+49 30 {r.randint(10000000, 99999999)}"
        return f"+33 1 {r.randint(10, 99)} {r.randint(10, 99)} {r.randint(10, 99)} {r.randint(10, 99)}"

    # --- identifiers ------------------------------------------------------------------------------------
    def digits(self, n, first_nonzero=True):
        s = str(self.rng.randint(1, 9)) if first_nonzero else str(self.rng.randint(0, 9))
        return s + "".join(str(self.rng.randint(0, 9)) for _ in range(n - 1))

    def nhs(self):
        while True:
            ds = [self.rng.randint(0, 9) for _ in range(9)]
            ds[0] = self.rng.randint(4, 9)
            check = 11 - sum(d * (10 - i) for i, d in enumerate(ds)) % 11
            check = 0 if check == 11 else check
            if check != 10:
                s = "".join(map(str, ds + [check]))
                return f"{s[:3]} {s[3:6]} {s[6:]}" if self.rng.random() < 0.6 else s

    def uk_dl(self):
        r = self.rng
        surname = "".join(r.choice("ABCDEFGHIJKLMNOPRSTUVWY") for _ in range(r.randint(3, 5))).ljust(5, "9")
        y, m, d = r.randint(40, 99), r.randint(1, 12), r.randint(1, 28)
        m += 50 if r.random() < 0.5 else 0
        initials = "".join(r.choice("ABCDEFGHJKLMNPRSTW") for _ in range(2))
        tail = str(r.randint(0, 9)) + "".join(r.choice("ABCDEFGHJKLMNPRSTUVWXYZ") for _ in range(2))
        return f"{surname}{y // 10}{m:02d}{d:02d}{y % 10}{initials}{tail}"

    def us_dl(self):
        r = self.rng
        letter = r.choice("ABCDEFGHJKLMNPRSTWY")
        kind = r.randrange(5)
        if kind == 0:  # California
            return letter + self.digits(7, False)
        if kind == 1:  # New York
            return self.digits(9)
        if kind == 2:  # Florida
            n = self.digits(12, False)
            return f"{letter}{n[:3]}-{n[3:6]}-{n[6:8]}-{n[8:11]}-{n[11]}"
        if kind == 3:  # Illinois
            n = self.digits(11, False)
            return f"{letter}{n[:3]}-{n[3:7]}-{n[7:]}"
        return self.digits(8)  # Texas

    def id_value(self, kind, phrase):
        """A value of this kind, in the form its phrase's cue names."""
        r, fk = self.rng, self.fakers
        special = next((v for cue, v in ID_CUE_VALUE.items() if cue in phrase), None)
        if kind == "passport":
            if special == "uk_passport":
                return self.digits(9)
            if special == "us_passport" or r.random() < 0.6:
                return fk["en_US"].passport_number()
            if r.random() < 0.5:  # German
                return "C" + "".join(r.choice("CFGHJKLMNPRTVWXYZ0123456789") for _ in range(8))
            letters = "ABCDEFGHJKLMNPRSTUVWXYZ"  # French
            return f"{r.randint(10, 99)}{r.choice(letters)}{r.choice(letters)}{self.digits(5, False)}"
        if kind == "drivers_license":
            return self.uk_dl() if special == "uk_dl" else self.us_dl()
        if kind == "tax_id":
            if special == "utr":
                n = self.digits(10)
                return f"{n[:5]} {n[5:]}" if r.random() < 0.4 else n
            if special == "steuer_id":
                n = self.digits(11)
                return f"{n[:2]} {n[2:5]} {n[5:8]} {n[8:]}" if r.random() < 0.5 else n
            if special == "codice_fiscale":
                return fk["it_IT"].ssn()
            if special == "pt_nif":
                return r.choice("12356") + self.digits(8, False)
            return fk["en_US"].itin()
        if kind == "government_id":
            return {
                "nhs": self.nhs,
                "pesel": fk["pl_PL"].pesel,
                "personnummer": fk["sv_SE"].ssn,
                "bsn": fk["nl_NL"].ssn,
                "nir": fk["fr_FR"].ssn,
                "cnp": fk["ro_RO"].ssn,
            }[special or "nhs"]()
        if kind == "us_ssn":
            return fk["en_US"].ssn()
        if kind == "iban":
            return self.iban()
        if kind == "payment_card":
            n = fk["en_US"].credit_card_number(card_type=r.choice(["visa16", "mastercard", "amex"]))
            if r.random() < 0.5:
                if len(n) == 16:
                    n = " ".join(n[i:i + 4] for i in range(0, 16, 4))
                else:  # American Express: 4-6-5
                    n = f"{n[:4]} {n[4:10]} {n[10:]}"
            return n
        if kind == "bank_account":
            return self.digits(r.choice([8, 10, 12]), False)
        raise ValueError(kind)

    def iban(self):
        loc = self.rng.choice(["de_DE", "fr_FR", "es_ES", "it_IT", "nl_NL", "pt_PT", "pl_PL", "en_GB"])
        v = self.fakers[loc].iban()
        if self.rng.random() < 0.5:
            v = " ".join(v[i:i + 4] for i in range(0, len(v), 4))
        return v

    def id_phrase(self, kinds=None):
        kind = self.rng.choice(kinds or [
            "passport", "passport", "drivers_license", "drivers_license", "tax_id", "tax_id",
            "government_id", "government_id", "us_ssn", "iban", "payment_card", "bank_account"])
        phrase = self.rng.choice(ID_PHRASES[kind])
        value = self.id_value(kind, phrase)
        before, after = phrase.split("{v}")
        return [(before, None), (value, kind), (after, None)]

    def bank(self):
        r = self.rng
        if r.random() < 0.7:
            routing, account = self.fakers["en_US"].aba(), self.digits(r.choice([8, 10, 12]), False)
            shape = r.choice(["routing number {r} and account number {a}", "ABA {r}, account {a}",
                              "account {a}, routing {r}"])
        else:
            routing = f"{r.randint(10, 99)}-{r.randint(10, 99)}-{r.randint(10, 99)}"
            account = self.digits(8, False)
            shape = r.choice(["sort code {r}, account number {a}", "account {a}, sort code {r}"])
        pieces = []
        for part in re.split(r"(\{r\}|\{a\})", shape):
            if part == "{r}":
                pieces.append((routing, "routing_number"))
            elif part == "{a}":
                pieces.append((account, "bank_account"))
            elif part:
                pieces.append((part, None))
        return pieces

    # --- rendering --------------------------------------------------------------------------------------
    def render(self, lang, template, group):
        lower = template.startswith("lc:")
        if lower:
            template = template[3:]
        loc = LANG_LOCALE.get(lang) or self.rng.choice(NAME_LOCALES)
        # Where the text says "she", the first person is a woman.
        she = bool(re.search(r"\b(she|her|Frau|Mrs|Ms)\b", template, re.I)) or None
        people = [self.person(loc if i == 0 or lang != "en" else self.rng.choice(NAME_LOCALES),
                              she if i == 0 else None) for i in range(3)]
        addr_loc = LANG_LOCALE.get(lang) or (loc if loc in ADDRESS_LOCALES else self.rng.choice(ADDRESS_LOCALES))
        health = HEALTH_LANG[lang] if lang != "en" else HEALTH_EN
        special = SPECIAL_LANG.get(lang, SPECIAL_EN)
        cache = {}

        def phrase_pieces(options, kind, female=True):
            p = self.rng.choice([o for o in options if female or not o.startswith("f:")])
            p = p[2:] if p.startswith("f:") else p
            p = p.replace("{year}", str(self.rng.randint(2015, 2025))).replace("{date}", self.other_date(lang))
            return parse_phrase(p, kind)

        def slot(name):
            if name in cache:  # the same slot twice in one template is the same value
                return cache[name]
            p = people
            if name in ("name", "name2", "name3"):
                v = [(p[{"name": 0, "name2": 1, "name3": 2}[name]]["full"], "person_name")]
            elif name == "rname":
                v = [(f"{p[0]['last'].upper()}, {p[0]['first']}", "person_name")]
            elif name in ("first", "first2"):
                v = [(p[0 if name == "first" else 1]["first"], "person_name")]
            elif name == "last2":
                v = [(p[1]["last"], "person_name")]
            elif name == "tname":
                v = [(p[0]["title"] + " ", None), (p[0]["last"], "person_name")]
            elif name in ("addr", "addr_ml"):
                v = [(self.address(addr_loc, multiline=name == "addr_ml"), "postal_address")]
            elif name in ("dob", "dob2", "born"):
                v = self.dob(lang, p[0 if name != "dob2" else 1]["female"], born_only=name == "born")
            elif name == "dob_line":
                v = self.dob(lang, p[0]["female"])
                v = [(self.rng.choice(["Date of birth: ", "DOB: "]), None), v[1]]
            elif name in ("health", "health2"):
                v = phrase_pieces(health, "health", p[0 if name == "health" else 1]["female"])
            elif name in ("health_bare", "health_cap"):
                v = [next((t, k) for t, k in phrase_pieces(HEALTH_BARE, "health") if k)]
                if name == "health_cap":
                    v = [(v[0][0][0].upper() + v[0][0][1:], "health")]
            elif name in ("special", "special2"):
                v = phrase_pieces(special, "special_category")
            elif name in ("special_bare", "special2_bare"):
                v = [next((t, k) for t, k in phrase_pieces(SPECIAL_EN, "special_category") if k)]
            elif name in ("id", "id2"):
                v = self.id_phrase()
            elif name in TYPED_ID_SLOTS:
                v = self.id_phrase(TYPED_ID_SLOTS[name])
            elif name == "iban_v":
                v = [(self.iban(), "iban")]
            elif name == "bank":
                v = self.bank()
            elif name in ("email", "email2"):
                named = name == "email" and re.search(r"\{(name|first|tname|rname)\}", template)
                v = [(self.email(p[0] if named else None), "email")]
            elif name == "phone":
                v = [(self.phone(), "phone")]
            elif name == "date":
                v = [(self.other_date(lang), None)]
            elif name == "org":
                v = [(self.rng.choice(ORGS), None)]
            elif name == "year":
                v = [(str(self.rng.randint(2015, 2025)), None)]
            elif name == "age":
                v = [(str(self.rng.randint(19, 88)), None)]
            else:
                raise KeyError(name)
            cache[name] = v
            return v

        pieces = []
        for i, part in enumerate(re.split(r"\{(\w+)\}", template)):
            if i % 2 == 0:
                if part:
                    pieces.append((part, None))
            else:
                pieces.extend(slot(part))
        if lower:
            pieces = [(t.lower() if k in (None, "person_name", "postal_address", "health", "special_category")
                       else t, k) for t, k in pieces]
        return assemble(pieces)


def assemble(pieces):
    """Join (text, kind) pieces into the text and its byte-offset spans."""
    text, spans, pos = "", [], 0
    for t, kind in pieces:
        n = len(t.encode("utf-8"))
        if kind:
            spans.append({"kind": kind, "start": pos, "end": pos + n})
        text += t
        pos += n
    return text, spans


# ---------------------------------------------------------------------------------------------------------
# Hard negatives. Public figures are labelled (person_name, internal); everything else carries no finding.

PUBLIC_FIGURES = [
    "Abraham Lincoln", "Marie Curie", "Ada Lovelace", "Albert Einstein", "Frida Kahlo", "Nelson Mandela",
    "Angela Merkel", "Gabriel García Márquez", "Antoni Gaudí", "Wisława Szymborska", "Søren Kierkegaard",
    "Fryderyk Chopin", "Leonardo da Vinci", "Isaac Newton", "Charles Darwin", "Simone de Beauvoir",
    "Johann Sebastian Bach", "Jane Austen", "William Shakespeare", "Alan Turing", "Grace Hopper",
    "Katherine Johnson", "Miguel de Cervantes", "Dante Alighieri", "Astrid Lindgren", "Vincent van Gogh",
    "Fernando Pessoa", "Napoleon Bonaparte", "Paris Hilton", "Michael Jordan", "Taylor Swift",
    "Greta Thunberg", "Lionel Messi", "Serena Williams", "Barack Obama", "Winston Churchill",
    "Kurt Gödel", "Emmy Noether", "Nikola Tesla", "Rosalind Franklin",
]
PUBLIC_QUESTIONS = [
    "Who was {pf}?",
    "Summarise {pf}'s main achievements in three bullet points.",
    "Write a short biography of {pf} for a school project.",
    "What is {pf} best known for?",
    "Compare {pf} and {pf2} in a short table.",
    "Give me five quotes attributed to {pf}.",
    "lc:when was {pf} born?",
    "Recommend three books about {pf}.",
    "Explain the historical context of {pf}'s work.",
    "lc:tell me a fun fact about {pf}",
    "Write a haiku about {pf}.",
    "Which museums have exhibitions on {pf}?",
    "What did {pf} say about education?",
    "Draft a quiz question whose answer is {pf}.",
    "Is the film about {pf} historically accurate?",
]
NEGATIVE_FIXED = [
    "Find me hotels in Paris near the Louvre for three nights.",
    "What is the capital of Jordan?",
    "Plan a five-day trip to Jordan including Petra and Wadi Rum.",
    "Jordan's economy depends heavily on services and tourism. Summarise the main sectors.",
    "In May the team will ship the new billing module.",
    "Schedule the quarterly review for May 5.",
    "may i ask how to make fluffy pancakes without eggs?",
    "What's the weather going to be like in Springfield this weekend?",
    "Is Washington state bigger than Georgia?",
    "List the best restaurants in Florence for a family.",
    "How do I get from Victoria station to Heathrow?",
    "Chelsea beat Arsenal 2-1 on Saturday. Write a match report.",
    "Compare the Ford Mustang and the Lincoln Navigator for fuel economy.",
    "Compare the iPhone 15 and the Galaxy S24 cameras.",
    "How do I reset my Kindle Paperwhite?",
    "Is the Tesla Model 3 worth it in 2025?",
    "Write a product description for a stainless steel water bottle.",
    "The patient portal's login page is broken since the 2.3 release; users get a 500 error.",
    "Our hospital's guest Wi-Fi is slow in the east wing. Suggest a network layout.",
    "Design a database schema for a pharmacy's stock of bandages and gloves.",
    "Write SQL to count appointments per clinic per month.",
    "Invoice dated 2024-03-04, due 2024-04-03, total EUR 1,250.00. Draft a payment reminder.",
    "The release is scheduled for 04.03.2025. Write the changelog intro.",
    "The nightly backup from 03/04/2024 failed with a checksum error.",
    "The contract was signed on 4 March 2023 and renews every year.",
    "Convert 1975-03-04 to an ISO week number.",
    "Order #483920175 has shipped; write a friendly status update.",
    "Tracking number 1Z999AA10123456784 shows no movement for five days.",
    "What does error 0x80070005 mean on Windows Update?",
    "The part number A1234567 is out of stock; suggest an alternative wording for the notice.",
    "Our SKU 4006381333931 is mislabelled on the shelf.",
    "ISBN 978-3-16-148410-0: is this a valid ISBN-13?",
    "Build 20240304.1 broke the login flow. Write a rollback plan.",
    "Explain how a union-find data structure works.",
    "What are union types in TypeScript?",
    "Summarise the European Union's AI Act in plain English.",
    "How did the Soviet Union's economy work?",
    "What was Labour Day originally about?",
    "Calculate the mass of a 2 m^3 block of granite.",
    "Outline a syllabus for an introduction to criminal law.",
    "How do I record my screen on a Mac?",
    "Born in the USA is a famous album. What year was it released?",
    "The idea was born out of frustration with spreadsheets. Write our origin story.",
    "Linux was born in 1991 as a hobby project. Give a timeline of its releases.",
    "Solve 3x + 7 = 22.",
    "What is the derivative of x^2 sin(x)?",
    "Prove that the square root of 2 is irrational.",
    "Give me a recipe for banana bread with 3 ripe bananas and 250 g flour.",
    "How long should I boil an egg for a soft yolk?",
    "Translate 'good morning' into German, French and Polish.",
    "Write a limerick about a cat who loves boxes.",
    "Explain the difference between TCP and UDP.",
    "What is the time complexity of quicksort in the worst case?",
    "Refactor this: def parse_date(s): return datetime.strptime(s, \"%Y-%m-%d\")",
    "Why does `SELECT * FROM orders WHERE created_at > '2024-03-04'` ignore my index?",
    "fn main() { let v: Vec<u32> = (1..=10).collect(); println!(\"{:?}\", v); }  // why does this print twice?",
    "Write a Python function that checks whether a string is a palindrome.",
    "Generate a regex that matches ISO dates like 2024-03-04.",
    "How do I configure nginx as a reverse proxy for port 8080?",
    "What's the difference between a mutex and a semaphore?",
    "git rebase -i HEAD~3 says 'cannot rebase: You have unstaged changes'. What now?",
    "My Docker container exits with code 137. Why?",
    "Write a cover letter template for a junior data analyst role.",
    "Summarise the plot of Pride and Prejudice in five sentences.",
    "What are good team-building activities for a remote team of ten?",
    "Draft a polite out-of-office message for the holidays.",
    "How many kilometres is a marathon?",
    "Explain inflation to a twelve-year-old.",
    "What are the rules of cricket in simple terms?",
    "List ten healthy snacks for the office.",
    "How do vaccines get approved in the EU? Keep it general.",
    "Write a short poem about the sea at dawn.",
    "What is the boiling point of water at 2,000 metres?",
    "Suggest names for a bakery in a small town.",
    "how do i center a div with flexbox",
    "whats the best way to learn rust as a python developer",
    "Write unit tests for a function that adds two matrices.",
    "Describe the water cycle for a primary school class.",
    "Create a packing list for a week of hiking in Norway.",
    "What are the main causes of the French Revolution?",
    "Write a memo announcing that the office will close early on Friday.",
    "Rewrite this sentence in passive voice: The committee approved the budget.",
    "Explain what a Kubernetes readiness probe is.",
    "How do I add a column with a default value in PostgreSQL?",
    "What is a good name for a golden retriever puppy?",
    "Give three arguments for and against a four-day work week.",
    "Summarise the key points of the GDPR for a small online shop.",
    "Draft an agenda for a one-hour sprint retrospective.",
    "Which is heavier, a kilogram of feathers or a kilogram of steel?",
    "Estimate the number of piano tuners in Chicago.",
    "Write a job ad for a part-time barista in Madrid.",
    "List the planets in order from the Sun.",
    "Convert 72 degrees Fahrenheit to Celsius.",
    "How does compound interest work on a savings account?",
    "What is the routing of a packet through a home router? Explain NAT.",
    "Explain what an account number checksum is, in general terms.",
    "How do passport photos need to be cropped? General rules only.",
    "What documents does a driving test centre usually ask for?",
    "The clinic's booking form crashes on Safari. Here is the stack trace: TypeError: undefined is not a function.",
    "Write a press release for our new solar panel product line.",
    "Give an example of a JSON schema for a blog post.",
    "Summarise this: Quarterly revenue rose 12% while costs fell 3%.",
]
# Parametrised negatives: city weather, maths, invoices, order numbers, product questions.
NEG_CITIES = ["Springfield", "Lyon", "Kraków", "Göteborg", "Sevilla", "Utrecht", "Porto", "Bologna",
              "Leeds", "Denver", "Brno", "Aarhus", "München", "Toulouse"]
NEG_PRODUCTS = ["Pixel 8", "ThinkPad X1 Carbon", "PlayStation 5", "Kindle Scribe", "Dyson V15",
                "MacBook Air", "Nintendo Switch", "Surface Pro", "Galaxy Tab S9"]
NEG_PARAM = [
    "What's the weather forecast for {city} tomorrow?",
    "Recommend things to do in {city} on a rainy day.",
    "lc:best coffee shops in {city}?",
    "Is the {product} good for students?",
    "Write a review of the {product} in under 100 words.",
    "Invoice {inv} dated {date}: please draft a reminder for the accounts team.",
    "What is {a} times {b}?",
    "Order #{order} was delivered late; write an apology template.",
    "The meeting is moved to {date}. Update the calendar invite text.",
    "Ticket JIRA-{ticket}: the export job times out after 30 seconds.",
    "Convert {a} km to miles.",
    "Write a tweet announcing our {product} giveaway.",
    "Plan a weekend in {city} on a budget.",
    "How far is {city} from {city2} by train?",
    "Shipment {order} is stuck in customs; draft a message to the carrier.",
    "Build {a}.{b}.0 fails on ARM; suggest debugging steps.",
    "What is the population of {city}?",
    "Error code {order} from the payment terminal: what could it mean?",
    "Book meeting room {a} for the workshop on {date}.",
    "Release notes for version {a}.{b}, due {date}: draft the intro.",
]


def negatives(gen, count):
    r = gen.rng
    out = []
    seen = set()

    def add(text, spans):
        if text not in seen:
            seen.add(text)
            out.append((text, spans))

    for text in NEGATIVE_FIXED:
        add(text, [])
    while len(out) < count:
        if r.random() < 0.45:
            tmpl = r.choice(PUBLIC_QUESTIONS)
            pf, pf2 = r.sample(PUBLIC_FIGURES, 2)
            lower = tmpl.startswith("lc:")
            tmpl = tmpl[3:] if lower else tmpl
            pieces = []
            for i, part in enumerate(re.split(r"\{(\w+)\}", tmpl)):
                if i % 2 == 0:
                    if part:
                        pieces.append((part.lower() if lower else part, None))
                else:
                    name = pf if part == "pf" else pf2
                    pieces.append((name.lower() if lower else name, "person_name"))
            add(*assemble(pieces))
        else:
            tmpl = r.choice(NEG_PARAM)
            city, city2 = r.sample(NEG_CITIES, 2)
            text = tmpl.format(
                city=city, city2=city2, product=r.choice(NEG_PRODUCTS),
                inv=f"INV-{r.randint(2023, 2026)}-{r.randint(1, 9999):04d}", date=gen.other_date("en"),
                a=r.randint(12, 999), b=r.randint(12, 999), order=gen.digits(9), ticket=r.randint(100, 9999))
            add(text, [])
    return out


GROUPS = [
    ("name_health", T_NAME_HEALTH, 90),
    ("name_dob", T_NAME_DOB, 70),
    ("name_address", T_NAME_ADDRESS, 70),
    ("name_id", T_NAME_ID, 90),
    ("name_special", T_NAME_SPECIAL, 60),
    ("name_only", T_NAME_ONLY, 50),
    ("contact", T_CONTACT, 30),
    ("address_only", T_ADDRESS_ONLY, 30),
    ("id_only", T_ID_ONLY, 45),
]
NEGATIVE_COUNT = 230


def generate(seed):
    gen = Gen(seed)
    rows, seen = [], set()

    def add(group, text, spans, n):
        spans = sorted(spans, key=lambda s: s["start"])
        rows.append({"id": f"{group}-{n:03d}", "text": text, "spans": spans,
                     "level": level_of(s["kind"] for s in spans), "group": group})

    for group, templates, count in GROUPS:
        order = []
        n = 0
        while n < count:
            if not order:  # every template once before any twice
                order = list(templates)
                gen.rng.shuffle(order)
            lang, tmpl = order.pop()
            text, spans = gen.render(lang, tmpl, group)
            if text in seen:
                continue
            seen.add(text)
            n += 1
            add(group, text, spans, n)
    n = 0
    for text, spans in negatives(gen, NEGATIVE_COUNT):
        if text in seen:
            continue
        seen.add(text)
        n += 1
        add("negative", text, spans, n)
    return rows


def check(rows):
    for row in rows:
        raw = row["text"].encode("utf-8")
        last = 0
        for s in row["spans"]:
            piece = raw[s["start"]:s["end"]].decode("utf-8")  # raises if not on a character boundary
            assert piece and piece == piece.strip(), (row["id"], piece)
            assert s["start"] >= last, (row["id"], "overlapping spans")
            last = s["end"]
        if row["group"] == "negative":
            assert row["level"] in ("public", "internal"), row["id"]
        elif row["group"] not in ("name_only", "address_only", "contact"):
            assert row["level"] == "restricted", (row["id"], row["level"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[2] / "bench" / "ner-eval.jsonl"))
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = ap.parse_args()
    import faker
    if faker.VERSION != FAKER_VERSION:
        print(f"warning: faker {faker.VERSION}, the set in the repository was made with {FAKER_VERSION}",
              file=sys.stderr)
    rows = generate(args.seed)
    check(rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    counts = {}
    for row in rows:
        counts[row["group"]] = counts.get(row["group"], 0) + 1
    print(f"{len(rows)} texts to {args.out}: " + ", ".join(f"{g} {c}" for g, c in counts.items()),
          file=sys.stderr)


if __name__ == "__main__":
    main()
